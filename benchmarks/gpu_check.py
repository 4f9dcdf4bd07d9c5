"""The GPU check: measured memory and speed of LoRA training steps against the planner's terms.

    python benchmarks/gpu_check.py             # one CUDA GPU (H100/H200 class): under 8 minutes
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny shapes, the same code path (CI)

For Qwen2-VL 2B- and 7B-shaped configs (the presets' config.json) with random bf16 weights
(memory and speed do not depend on the values; nothing is downloaded): LoRA r8 on the
language linears, gradient checkpointing, batch 1, rows of max_length 2048 tokens with one
image at max_pixels 1003520 (1280 visual tokens) and of 1024 tokens with one image at 602112
(768 tokens: a 1280-token image does not fit in 1024), each with --trained answer tokens. Three
variants per length, all through the workbench's own training path (load_model, apply_lora,
the Trainer subclass): bf16 base with the full-vocabulary loss, bf16 with the trained-token
loss, nf4 base (QLoRA) with the trained-token loss. Each runs --steps optimizer steps;
measured: torch.cuda.max_memory_allocated and max_memory_reserved over the steps, plus the
CUDA context (NVML used minus torch reserved at start-up), against the planner's per-device
terms for the same settings; tokens/s over the steps after the first. Last, FSDP2 over the
2B (tiny-a) model's nf4 base on this GPU against the same model unsharded (``fsdp_nf4_check``).

The bf16 model is built directly on the GPU; the nf4 runs load its saved copy through
load_model (quantisation happens while loading, as in a real run), so a 7B run needs about
17 GB of free disk in --workdir.

Prints a table, then one JSON line: {"device", "seconds", "rows": [...], "fsdp_nf4": {...}}. In
--dry-run the "allocated" figure is the CPU tensor tracker's peak (benchmarks/planner_accuracy.py) plus
the model's own tensors, "reserved" is absent, and the prediction leaves out the CUDA
context and allocator slack.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GIB = 1024**3
# max_length -> image grid (t, h, w in 14-pixel patches); visual tokens = t*h*w/4
GPU_ROWS = {1024: (1, 48, 64), 2048: (1, 64, 80)}
DRY_RUN_ROWS = {128: (1, 8, 8), 192: (1, 8, 16)}
VARIANTS = (("bf16", False), ("bf16", True), ("nf4", True))  # (base, trained-token loss)


def model_configs(dry_run: bool) -> list[tuple[str, object]]:
    """(label, Qwen2VLConfig): the 2B and 7B presets, or two tiny shapes for --dry-run."""
    from workbench.models import load_model_config

    if not dry_run:
        return [("2B", load_model_config("qwen2-vl-2b-instruct")), ("7B", load_model_config("qwen2-vl-7b-instruct"))]
    from benchmarks.planner_accuracy import tiny_config

    return [("tiny-a", tiny_config(4096)), ("tiny-b", tiny_config(8192))]


def build_random_model(config, device: str):
    """A Qwen2-VL with random bf16 weights, built on ``device``."""
    from transformers import Qwen2VLForConditionalGeneration

    text = config.text_config
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if (getattr(text, name, None) or 0) >= text.vocab_size:  # tiny vocabularies
            setattr(text, name, 0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)


def training_row(config, length: int, grid: tuple[int, int, int], trained: int) -> dict:
    """One row of ``length`` tokens: text, one image of grid t x h x w patches, a trained answer at the end."""
    t, h, w = grid
    image_tokens = t * h * w // 4
    vocab = config.text_config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(0, min(vocab, config.vision_start_token_id) - 1, (length,))
    ids[4] = config.vision_start_token_id
    ids[5:5 + image_tokens] = config.image_token_id
    ids[5 + image_tokens] = config.vision_end_token_id
    kinds = torch.zeros_like(ids)
    kinds[5:5 + image_tokens] = 1
    labels = torch.full_like(ids, -100)
    labels[-trained:] = ids[-trained:]
    patch_values = 3 * 2 * 14 * 14
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": kinds, "labels": labels,
            "pixel_values": torch.randn(t * h * w, patch_values, dtype=torch.bfloat16),
            "image_grid_thw": torch.tensor([[t, h, w]])}


def max_pixels(grid: tuple[int, int, int]) -> int:
    t, h, w = grid
    return t * h * w // 4 * 28 * 28


def run_config(output_dir: str, length: int, grid, quantization: str, trained_loss: bool, steps: int):
    from workbench.settings import RunConfig

    return RunConfig.from_dict({
        "model": {"dtype": "bf16", "quantization": quantization, "device_map": None},
        "data": {"max_length": length, "max_pixels": max_pixels(grid)},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": "language-all-linear"},
        "training": {"max_steps": steps, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                     "save_steps": 0, "warmup_ratio": 0.0, "logging_steps": 1000, "gradient_checkpointing": True,
                     "loss_on_trained_tokens_only": trained_loss, "output_dir": output_dir}})


class StepClock:
    """Wall time of each optimizer step (synchronised on CUDA)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.sync()
                clock.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.sync()
                clock.seconds.append(time.perf_counter() - clock.started)

        self.callback = Callback()
        self.seconds: list[float] = []
        self.started = 0.0

    @staticmethod
    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def train_steps(model, config, row: dict, cuda: bool) -> dict:
    """Run the workbench's Trainer for config's steps; peak memory and tokens/s."""
    from transformers.trainer_callback import PrinterCallback

    from benchmarks.planner_accuracy import LiveStorage
    from workbench.data.collate import Collator
    from workbench.training.job import trainer_class
    from workbench.training.inputs import build_trainer_args

    clock = StepClock()
    trainer = trainer_class()(model=model, args=build_trainer_args(config, has_eval=False), train_dataset=[row],
                              data_collator=Collator(0), callbacks=[clock.callback],
                              loss_on_trained_tokens_only=config.training.loss_on_trained_tokens_only)
    trainer.remove_callback(PrinterCallback)
    result = {}
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        result.update(allocated_bytes=int(torch.cuda.max_memory_allocated()),
                      reserved_bytes=int(torch.cuda.max_memory_reserved()))
    else:
        existing = list(model.parameters()) + list(model.buffers())
        own = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in existing}.values())
        with LiveStorage(existing) as tracker:
            trainer.train()
        result.update(allocated_bytes=int(tracker.peak + own), reserved_bytes=None)
    timed = clock.seconds[1:] or clock.seconds
    result["tokens_per_s"] = round(len(row["input_ids"]) * len(timed) / sum(timed), 1)
    del trainer
    return result


def predicted(folder: str, gpu, length: int, grid, quantization: str, trained: int | None) -> dict:
    """The planner's terms for one GPU holding the whole model (device_map on one device)."""
    from workbench.planner import PlanRequest, plan_memory

    request = PlanRequest(folder, [gpu], max_length=length, max_pixels=max_pixels(grid), strategy="device_map",
                          quantization=quantization if quantization != "bf16" else "none",
                          loss_on_trained_tokens_only=trained is not None, trained_tokens=trained or 0)
    row = plan_memory(request).devices[0]
    return {k: v for k, v in row.items() if k.endswith("_bytes")}


def cuda_context_bytes() -> int:
    """What the CUDA context and libraries hold outside torch's allocator (NVML used minus reserved)."""
    import pynvml

    torch.zeros(1, device="cuda")
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used - torch.cuda.memory_reserved())


def allocated_now(cuda: bool) -> int:
    """Bytes still allocated before a base loads (should be ~0: a leftover would inflate "measured")."""
    return int(torch.cuda.memory_allocated()) if cuda else 0


def check_model(label: str, config, shapes: dict, trained: int, steps: int, workdir: Path, cuda: bool, gpu,
                context: int) -> list[dict]:
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora

    device = "cuda" if cuda else "cpu"
    folder = workdir / label
    leftover = allocated_now(cuda)
    model = build_random_model(config, device)
    model.save_pretrained(folder)  # for the nf4 load and for the planner (config.json)
    rows = []
    length, grid = next(iter(shapes.items()))
    for quantization in ("bf16", "nf4"):
        settings = run_config(str(workdir / "out"), length, grid, "nf4" if quantization == "nf4" else "none", True,
                              steps)
        if quantization == "nf4":
            del model
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            leftover = allocated_now(cuda)
            model = load_model(str(folder), settings, device_map={"": 0} if cuda else {"": "cpu"})
        model = apply_lora(model, settings.lora, gradient_checkpointing=True)
        for length, grid in shapes.items():
            row_inputs = training_row(config, length, grid, trained)
            for base, trained_loss in VARIANTS:
                if base != quantization:
                    continue
                settings = run_config(str(workdir / f"out-{label}-{length}-{base}-{trained_loss}"), length, grid,
                                      "nf4" if base == "nf4" else "none", trained_loss, steps)
                measured = train_steps(model, settings, row_inputs, cuda)
                terms = predicted(str(folder), gpu, length, grid, base, trained if trained_loss else None)
                if cuda:
                    total, prediction = measured["reserved_bytes"] + context, terms["total_bytes"]
                else:  # no CUDA context or allocator slack on the CPU
                    total, prediction = measured["allocated_bytes"], terms["total_bytes"] - terms["overhead_bytes"]
                rows.append({"model": label, "max_length": length, "visual_tokens": max_pixels(grid) // 784,
                             "base": base, "trained_token_loss": trained_loss, "trained_tokens": trained,
                             "leftover_bytes": leftover, **measured,
                             "context_bytes": context if cuda else None, "measured_bytes": total,
                             "predicted_bytes": prediction, "error": round(prediction / total - 1, 4), "terms": terms})
                print_row(rows[-1], "GiB" if cuda else "MiB")
    del model
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def fsdp_nf4_check(label: str, config, workdir: Path, cuda: bool) -> dict:
    """FSDP2 over an nf4 base (packed weights stored in bf16) loaded on the CPU and sharded onto this
    one device, as a run does, against the same model loaded whole on the device (benchmarks/qlora_fsdp.py: forward, LoRA gradients, the packed bytes after an
    all-gather). A group of one still swaps every parameter through FSDP2's all-gather, which is
    where bitsandbytes issue #1945 reports bf16-stored nf4 bytes rewritten on CUDA; the CPU runs
    of 2 ranks (fp32 storage) keep every byte."""
    import torch.distributed as dist

    from benchmarks.qlora_fsdp import compare_sharded
    from workbench.training.launch_plan import free_port
    from workbench.training.loading import load_model

    folder = workdir / f"{label}-fsdp-nf4"
    build_random_model(config, "cpu").save_pretrained(folder)
    settings = run_config(str(workdir / "out-fsdp-nf4"), 128, (1, 8, 8), "nf4", True, 1)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        device = "cuda:0" if cuda else "cpu"
        result = {"model": label,
                  **compare_sharded(lambda where: load_model(str(folder), settings, device_map={"": where}), device)}
    finally:
        dist.destroy_process_group()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"FSDP2 over nf4 ({label}, {result['storage_dtype']} storage, 1 rank): forward differs by "
          f"{result['forward_max_abs_diff']:.3g}, LoRA gradients by {result['lora_grad_max_abs_diff']:.3g}, packed "
          f"bytes {'kept' if result['packed_bytes_survive_all_gather'] else 'REWRITTEN'} by the all-gather, "
          f"{result['sharded_4bit']} of {result['all_4bit']} 4-bit weights sharded")
    return result


def header(unit: str) -> str:
    return (f"{'model':7s} {'len':>5s} {'base':5s} {'loss':8s} {'allocated':>10s} {'reserved':>10s} "
            f"{'measured':>10s} {'predicted':>10s} {'error':>7s} {'tokens/s':>9s}   ({unit})")


def print_row(row: dict, unit: str) -> None:
    scale = GIB if unit == "GiB" else 1024**2

    def size(value):
        return f"{value / scale:10.2f}" if value is not None else f"{'-':>10s}"

    loss = "trained" if row["trained_token_loss"] else "full"
    print(f"{row['model']:7s} {row['max_length']:5d} {row['base']:5s} {loss:8s} {size(row['allocated_bytes'])} "
          f"{size(row['reserved_bytes'])} {size(row['measured_bytes'])} {size(row['predicted_bytes'])} "
          f"{100 * row['error']:+6.1f}% {row['tokens_per_s']:9.1f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script, not the planner.")
    parser.add_argument("--trained", type=int, default=128, help="Trained (answer) tokens per row (default 128).")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per variant (the first is not timed).")
    parser.add_argument("--workdir", default="", help="Where the random checkpoints go (default: a temp folder).")
    args = parser.parse_args(argv)
    from workbench.hardware import Gpu

    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("No CUDA device: run with --dry-run for the CPU check of the script.", file=sys.stderr)
        return 2
    if cuda:
        name = torch.cuda.get_device_name()
        gpu = Gpu(0, name, torch.cuda.get_device_properties(0).total_memory)
        context, shapes, trained = cuda_context_bytes(), GPU_ROWS, args.trained
    else:
        torch.set_num_threads(1)  # tiny shapes: the workbench's own rule for tiny CPU models
        name, gpu = "cpu (dry run)", Gpu(0, "cpu", 80 * GIB)
        context, shapes, trained = 0, DRY_RUN_ROWS, min(args.trained, 16)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{name}: random bf16 Qwen2-VL, LoRA r8, gradient checkpointing, one image, {trained} trained tokens")
    print(header("GiB" if cuda else "MiB"))
    rows = []
    for label, config in model_configs(args.dry_run):
        rows += check_model(label, config, shapes, trained, args.steps, workdir, cuda, gpu, context)
    label, config = model_configs(args.dry_run)[0]
    fsdp_nf4 = fsdp_nf4_check(label, config, workdir, cuda)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"device": name, "seconds": round(time.perf_counter() - started, 1), "rows": rows,
                      "fsdp_nf4": fsdp_nf4}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
