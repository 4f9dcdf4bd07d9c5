"""Export memory: peak resident memory of the streaming merge against the size of the base.

Builds a base locally with Qwen2-VL-2B-Instruct's exact shapes (the preset config: 2.2B
parameters, tied embeddings, bf16, random weights, hub key names) in several safetensors
shards, and a rank-16 LoRA on every language linear and the vision merger (random A and B).
Then, each in a fresh process, measures peak RSS (ru_maxrss of the child):

- the floor: a process that only imports what ``python -m workbench export`` imports;
- ``python -m workbench export --merge`` at two --max-shard-size values;
- the usual way (ms-swift, LLaMA-Factory): ``from_pretrained`` the whole base, attach the
  adapter, ``merge_and_unload()``, ``save_pretrained`` (skip with --no-baseline).

Spot check: a few merged tensors of the streaming export against the usual way's output.

    python benchmarks/export.py [--work DIR] [--shard-sizes 1GB,250MB] [--no-baseline]

Prints progress to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PRESET = ROOT / "assets" / "models" / "qwen2-vl-2b-instruct.json"
BASE_SHARD = "1GB"
RANK, ALPHA = 16, 32
TARGETS = r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|visual\.merger\.mlp\.(0|2))"
SPOT_CHECK = ("model.layers.0.self_attn.q_proj.weight", "model.layers.27.mlp.down_proj.weight",
              "visual.merger.mlp.2.weight", "model.embed_tokens.weight")

# Run by a fresh interpreter: the peak RSS of `argv` as a child of that interpreter alone.
PEAK_OF = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": done.returncode, "seconds": time.perf_counter() - start, "stderr": done.stderr[-2000:],
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""

FLOOR = ("import torch, transformers, peft, safetensors, huggingface_hub, workbench.export, workbench.inference, "
         "workbench.models; from peft.tuners.lora.layer import dispatch_default")

USUAL_MERGE = """
import sys, torch
from peft import PeftModel
from transformers import Qwen2VLForConditionalGeneration
base, adapter, out = sys.argv[1:]
model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def legacy_name(module_name: str) -> str:
    """transformers 5 module names -> the hub checkpoints' names (model.layers.*, visual.*)."""
    if module_name.startswith("model.language_model."):
        return "model." + module_name.removeprefix("model.language_model.")
    if module_name.startswith("model.visual."):
        return module_name.removeprefix("model.")
    return module_name


def build_base(folder: Path) -> dict:
    """Random bf16 weights with the 2B's shapes, written shard by shard (never all in memory)."""
    import torch
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.torch import save_file

    from workbench.models import build_meta_model, load_model_config

    config = load_model_config(str(PRESET))
    meta = build_meta_model(config, "bf16")
    shapes = {legacy_name(k): tuple(v.shape) for k, v in meta.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight")  # as on the hub: the head is the embedding
    numel = {k: int(torch.Size(s).numel()) for k, s in shapes.items()}
    split = split_state_dict_into_shards_factory(shapes, get_storage_size=lambda s: int(torch.Size(s).numel()) * 2,
                                                 filename_pattern="model{suffix}.safetensors", max_shard_size=BASE_SHARD)
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for filename, names in split.filename_to_tensors.items():
        shard = {n: torch.empty(shapes[n], dtype=torch.bfloat16).normal_(0, 0.02, generator=generator) for n in names}
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
        del shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(numel.values()) * 2}, "weight_map": split.tensor_to_filename}))
    shutil.copyfile(PRESET, folder / "config.json")
    from workbench.demo import ensure_demo

    demo = ensure_demo().model  # a processor to copy along (the merge does not read it)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja",
                 "generation_config.json"):
        shutil.copyfile(demo / name, folder / name)
    return {"parameters": sum(numel.values()), "base_bytes": sum(numel.values()) * 2,
            "base_shards": len(split.filename_to_tensors)}


def build_adapter(folder: Path, base: Path) -> int:
    """A rank-16 LoRA on the same modules as the demo preset, random A and B, saved as peft does."""
    import re

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from workbench.models import build_meta_model, load_model_config

    meta = build_meta_model(load_model_config(str(PRESET)), "bf16")
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in meta.named_modules():
        if re.fullmatch(TARGETS, name) and isinstance(module, torch.nn.Linear):
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, module.in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(module.out_features, RANK, generator=generator) * 0.01
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, base_model_name_or_path=str(base),
               task_type="CAUSAL_LM").save_pretrained(str(folder))
    return (folder / "adapter_model.safetensors").stat().st_size


def peak_of(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK_OF, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{argv[:4]} failed: {result['stderr']}")
    return result


def spot_check(streamed: Path, usual: Path) -> float:
    """Largest difference between the two merges on a few tensors (bf16 rounding of the last add)."""
    from safetensors import safe_open

    def tensor(folder: Path, name: str):
        index = folder / "model.safetensors.index.json"
        file = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
        with safe_open(str(folder / file), "pt") as f:
            return f.get_tensor(name).float()

    return max(float((tensor(streamed, n) - tensor(usual, n)).abs().max()) for n in SPOT_CHECK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="Scratch folder (default: a new temporary one, removed at the end).")
    parser.add_argument("--shard-sizes", default="1GB,250MB", help="--max-shard-size values to measure.")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the from_pretrained + merge_and_unload run.")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="export-bench-"))
    base, adapter = work / "base", work / "adapter"
    try:
        start = time.perf_counter()
        facts = build_base(base)
        facts["adapter_bytes"] = build_adapter(adapter, base)
        say(f"built the base ({facts['base_bytes'] / 2**30:.2f} GiB, {facts['base_shards']} shards) and the adapter "
            f"in {time.perf_counter() - start:.0f} s")
        floor = peak_of([sys.executable, "-c", FLOOR])["peak_rss_bytes"]
        say(f"import floor: {floor / 2**30:.2f} GiB")
        streaming = []
        for size in args.shard_sizes.split(","):
            out = work / f"merged-{size}"
            run = peak_of([sys.executable, "-m", "workbench", "export", "--adapter", str(adapter), "--out", str(out),
                           "--merge", "--max-shard-size", size])
            shards = [p.stat().st_size for p in out.glob("model-*.safetensors")]
            streaming.append({"max_shard_size": size, "shards": len(shards), "largest_shard_bytes": max(shards),
                              "peak_rss_bytes": run["peak_rss_bytes"], "seconds": round(run["seconds"], 1)})
            say(f"streaming merge, shards {size}: peak {run['peak_rss_bytes'] / 2**30:.2f} GiB in {run['seconds']:.0f} s")
            if streaming[1:]:
                shutil.rmtree(out)  # the first is kept for the spot check; the rest would only fill the disk
        result = {"model": "Qwen2-VL-2B-Instruct shapes, random bf16, hub key names", **facts,
                  "lora": f"r={RANK} alpha={ALPHA} on language linears + merger", "import_floor_rss_bytes": floor,
                  "streaming": streaming,
                  "streaming_peak_over_base": round(max(s["peak_rss_bytes"] for s in streaming) / facts["base_bytes"], 3)}
        if not args.no_baseline:
            usual_out = work / "usual"
            run = peak_of([sys.executable, "-c", USUAL_MERGE, str(base), str(adapter), str(usual_out)])
            result["usual_merge_peak_rss_bytes"] = run["peak_rss_bytes"]
            result["usual_merge_seconds"] = round(run["seconds"], 1)
            result["usual_peak_over_base"] = round(run["peak_rss_bytes"] / facts["base_bytes"], 3)
            say(f"from_pretrained + merge_and_unload: peak {run['peak_rss_bytes'] / 2**30:.2f} GiB in {run['seconds']:.0f} s")
            result["spot_check_max_abs_diff"] = spot_check(work / f"merged-{args.shard_sizes.split(',')[0]}", usual_out)
        print(json.dumps(result))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
