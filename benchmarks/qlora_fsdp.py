"""FSDP2 (``fully_shard``) over a bitsandbytes nf4 base: does a sharded 4-bit layer still compute
the same thing, and what does loading cost in host memory? (docs/qlora-fsdp.md)

    python benchmarks/qlora_fsdp.py [--nproc 2] [--model qwen2-vl-72b-instruct --ranks 4]

Starts ``--nproc`` CPU processes (gloo) with torch.distributed.run. Each loads the demo base
with its language linears in nf4, the packed weights stored in the float dtype as the workbench
loads them (``loading.quantization_config``), runs the language model once whole, shards each
decoder layer and the root with ``fully_shard`` and runs it again. It reports the largest
difference between the two outputs, whether every packed byte survives FSDP2's all-gather
(a gathered layer compared with the copy taken before sharding, as raw bytes: float NaN
patterns inside the packed nibbles must not be rewritten), how many 4-bit weights are
sharded, and each rank's resident memory before and after (the demo is too small for
these to tell the two ways of loading apart: see --model).

The same comparison runs on one GPU in benchmarks/gpu_check.py (``compare_sharded``).

``--model``: also the host-memory arithmetic for that preset's nf4 base on one node of
``--ranks`` GPUs, both ways of giving every rank its shard (every rank quantises the whole
base, which the workbench does; or rank 0 quantises and broadcasts, which accelerate does
for an unquantised base only).

Last line (rank 0): one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORKER_ENV = "QLORA_FSDP_WORKER"
GIB = 1024**3


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def packed_bytes(weight) -> bytes:
    import torch

    # a copy on the CPU: numpy would pin the storage FSDP2 frees
    return weight.detach().to("cpu", copy=True).view(torch.uint8).numpy().tobytes()


def with_lora(model, device):
    """The model with seeded LoRA weights on its language linears, in training mode, and its input ids."""
    import torch

    from workbench.settings import LoraSettings
    from workbench.training.lora import apply_lora

    model = apply_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="language-all-linear"),
                       gradient_checkpointing=False)
    model.train()  # bitsandbytes repacks CPU weights for inference in eval mode; training never does
    torch.manual_seed(0)  # the same adapter on every rank and in both copies: fully_shard keeps each rank's slice
    for p in model.parameters():  # B starts at zero: make the adapter's own path count in the output too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.arange(1, 17, device=device).remainder(model.config.text_config.vocab_size - 1).unsqueeze(0) + 1
    return model.base_model.model.model.language_model, ids


def forward_backward(language, ids):
    out = language(input_ids=ids).last_hidden_state
    out.float().pow(2).mean().backward()
    # fully_shard replaces the parameters (same names): read them afresh
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().float()
             for n, p in language.named_parameters() if p.requires_grad}
    return out.detach().float(), grads


def compare_sharded(load, device) -> dict:
    """The language model's output and LoRA gradients of an nf4 base loaded whole on ``device``
    (``load(device)``), against a copy loaded on the CPU (as a FSDP2 run loads it) with each
    decoder layer and the root sharded by ``fully_shard`` over the process group (which moves
    it to ``device``): the largest differences, the packed bytes of a gathered weight against
    the copy taken before sharding, and how many 4-bit weights are sharded."""
    from torch.distributed.fsdp import fully_shard

    from workbench.training.fsdp_4bit import sharded_4bit_weights

    whole, whole_grads = forward_backward(*with_lora(load(device), device))
    language, ids = with_lora(load("cpu"), device)
    first = language.layers[0].mlp.down_proj.base_layer
    original = packed_bytes(first.weight)
    for layer in language.layers:
        fully_shard(layer)
    fully_shard(language)
    sharded, sharded_grads = forward_backward(language, ids)
    language.layers[0].unshard()
    gathered = packed_bytes(first.weight)
    language.layers[0].reshard()
    done, total = sharded_4bit_weights(language)
    return {"storage_dtype": str(first.weight.dtype), "device": str(first.weight.device),
            "forward_max_abs_diff": float((sharded - whole).abs().max()),
            "lora_grad_max_abs_diff": max(float((sharded_grads[n] - g).abs().max()) for n, g in whole_grads.items()),
            "packed_bytes_survive_all_gather": gathered == original, "sharded_4bit": done, "all_4bit": total}


def worker() -> dict:
    import torch
    import torch.distributed as dist

    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig
    from workbench.training.loading import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    config = RunConfig.from_dict(DEMO_TRAINING).replace(model={"quantization": "nf4",
                                                               "dtype": os.environ[WORKER_ENV]})
    before_load = rss()
    path = str(ensure_demo().model)
    result = {"world": dist.get_world_size(),
              **compare_sharded(lambda where: load_model(path, config, device_map={"": where}), "cpu")}
    after_load = rss()
    rows: list = [None] * dist.get_world_size()
    dist.all_gather_object(rows, {"rank": dist.get_rank(), "rss_before_bytes": before_load,
                                  "rss_after_bytes": after_load})
    result["ranks"] = rows
    dist.destroy_process_group()
    return result


def host_memory(model: str, ranks: int) -> dict:
    """Host bytes on one node while every rank gets its nf4 shard, from the planner's layout.

    Every rank quantises: each rank holds the whole quantised base before sharding, so the node
    peaks at ranks x base. Rank 0 quantises and broadcasts: rank 0 holds the whole base, each of
    the others receives its shard, so the node peaks at base + (ranks - 1) x base / ranks.
    Either way transformers quantises one checkpoint tensor at a time while loading, so the
    transient on top is one bf16 tensor (the largest: the embeddings), not the bf16 base."""
    from workbench.planner import PlanRequest
    from workbench.planner.request import layout_for

    layout = layout_for(PlanRequest(model=model, gpus=[], quantization="nf4"))
    base = layout.weight_bytes
    biggest = max(b for _, b in layout.param_bytes)
    return {"model": model, "ranks": ranks, "nf4_base_bytes": base, "largest_tensor_bytes": biggest,
            "every_rank_quantises_node_peak_bytes": ranks * (base + biggest),
            "rank0_broadcasts_node_peak_bytes": base + biggest + (ranks - 1) * -(-base // ranks)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="model.dtype, which is also the packed weights' storage (auto: fp32 on the CPU)")
    parser.add_argument("--model", default="", help="a preset: also the host-memory arithmetic for its nf4 base")
    parser.add_argument("--ranks", type=int, default=4, help="GPUs on the node, for --model")
    args = parser.parse_args(argv)
    if os.environ.get(WORKER_ENV):
        result = worker()
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return 0
    from workbench.demo import ensure_demo

    ensure_demo()  # once, here: two ranks writing a new demo at once would read each other's half-made copy
    env = {**os.environ, WORKER_ENV: args.dtype, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                               "--master_port", str(_free_port()), __file__], env=env, capture_output=True, text=True)
    if launched.returncode != 0:
        print(launched.stderr[-4000:], file=sys.stderr)
        return launched.returncode
    result = json.loads(launched.stdout.strip().splitlines()[-1])
    if args.model:
        result["host_memory"] = host_memory(args.model, args.ranks)
    print(json.dumps(result))
    return 0


def _free_port() -> int:
    from workbench.training.launch_plan import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
