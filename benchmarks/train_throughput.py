"""Training throughput: the workbench's job vs a minimal plain Trainer + peft script.

Same demo model, data, LoRA and Trainer settings; each side runs in its own fresh
process; both time the same steps (after warm-up) with the same callback. The
workbench side pays for what it adds: the bridge callback, per-step NaN checks,
metrics rows with memory samples appended to metrics.jsonl, checkpoint markers.

    python benchmarks/train_throughput.py [--warmup 5] [--steps 40] [--batch 4] [--rounds 2]

Prints one line per process, then as its last line:
{"workbench_samples_per_s": ..., "plain_samples_per_s": ..., "ratio": ...,
 "workbench_peak_rss_bytes": ..., "plain_peak_rss_bytes": ...}
(with a GPU also the peak torch.cuda allocated bytes of each side).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_timer(warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time from the end of the warm-up steps to the end of the last step."""

        def __init__(self):
            self.start = self.end = None
            self.first = self.last = 0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start, self.first = time.perf_counter(), state.global_step
            elif state.global_step > warmup:
                self.end, self.last = time.perf_counter(), state.global_step

    return StepTimer()


def demo_settings(args, out: Path):
    from workbench.demo import DEMO_TRAINING
    from workbench.settings import RunConfig

    return RunConfig.from_dict(DEMO_TRAINING).replace(training={
        "max_steps": args.warmup + args.steps, "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 0, "warmup_ratio": 0.0,
        "output_dir": str(out)})


def run_workbench(args, out: Path, timer) -> None:
    from workbench.training import JobState, TrainingJob
    from workbench.training import job as job_module

    real = job_module.trainer_class

    def timed():
        class Timed(real()):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.add_callback(timer)

        return Timed

    job_module.trainer_class = timed
    # the bridge's own time per step, measured in place: robust to a busy machine's noise
    from workbench.training.bridge import WorkbenchCallback

    for name in ("on_log", "on_pre_optimizer_step", "on_step_end"):
        setattr(WorkbenchCallback, name, _timed(getattr(WorkbenchCallback, name)))
    job = TrainingJob(demo_settings(args, out))
    assert job.run() == JobState.FINISHED, job.message


BRIDGE_SECONDS = [0.0]


def _timed(method):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            BRIDGE_SECONDS[0] += time.perf_counter() - start

    return wrapper


def run_plain(args, out: Path, timer) -> None:
    """What a user would write by hand: load, LoRA, Trainer, train, save."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Trainer, TrainingArguments

    from workbench.data.collate import Collator, SampleDataset, SampleEncoder
    from workbench.data.formats import load_samples
    from workbench.demo import ensure_demo
    from workbench.settings import TARGET_PRESETS

    cfg = demo_settings(args, out)
    demo = ensure_demo()
    processor = AutoProcessor.from_pretrained(demo.model)
    processor.tokenizer.padding_side = "right"
    encoder = SampleEncoder(processor, cfg.data.max_length, cfg.data.min_pixels, cfg.data.max_pixels)
    train = SampleDataset(load_samples(demo.train).samples, encoder)
    model = Qwen2VLForConditionalGeneration.from_pretrained(demo.model, dtype=torch.float32)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # the thread count the workbench uses for tiny CPU models
    model = get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=TARGET_PRESETS[cfg.lora.target_modules],
                                             task_type="CAUSAL_LM"))
    t = cfg.training
    trainer_args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=t.per_device_train_batch_size, gradient_accumulation_steps=1,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler_type, max_steps=t.max_steps,
        logging_steps=1, save_strategy="no", seed=t.seed, use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False, report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=trainer_args, train_dataset=train,
                      data_collator=Collator(processor.tokenizer.pad_token_id), callbacks=[timer])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # printing is not what is measured
    trainer.train()
    model.save_pretrained(out)


def child(args) -> None:
    timer = step_timer(args.warmup)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-")) / "run"
    (run_workbench if args.child == "workbench" else run_plain)(args, out, timer)
    steps = timer.last - timer.first
    result = {"side": args.child, "samples_per_s": steps * args.batch / (timer.end - timer.start),
              "measured_steps": steps, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if args.child == "workbench":
        total_steps = args.warmup + args.steps
        result["bridge_ms_per_step"] = 1000 * BRIDGE_SECONDS[0] / total_steps
        result["step_ms"] = 1000 * (timer.end - timer.start) / steps
    import torch

    if torch.cuda.is_available():
        result["peak_cuda_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps first (allocator, caches).")
    parser.add_argument("--steps", type=int, default=40, help="Timed optimizer steps per side.")
    parser.add_argument("--batch", type=int, default=4, help="Rows per step (demo rows).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Alternating runs per side; the best of each side counts (noise on shared machines).")
    parser.add_argument("--child", choices=["workbench", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from workbench.demo import ensure_demo

    ensure_demo()
    results: dict[str, list[dict]] = {"workbench": [], "plain": []}
    for _ in range(args.rounds):
        for side in ("plain", "workbench"):
            cmd = [sys.executable, __file__, "--child", side, "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            results[side].append(row)
    best = {side: max(rows, key=lambda r: r["samples_per_s"]) for side, rows in results.items()}
    summary = {"workbench_samples_per_s": round(best["workbench"]["samples_per_s"], 4),
               "plain_samples_per_s": round(best["plain"]["samples_per_s"], 4),
               "ratio": round(best["workbench"]["samples_per_s"] / best["plain"]["samples_per_s"], 4),
               "workbench_peak_rss_bytes": max(r["peak_rss_bytes"] for r in results["workbench"]),
               "plain_peak_rss_bytes": max(r["peak_rss_bytes"] for r in results["plain"])}
    print(json.dumps({"bridge_ms_per_step": round(min(r["bridge_ms_per_step"] for r in results["workbench"]), 3),
                      "workbench_step_ms": round(min(r["step_ms"] for r in results["workbench"]), 1)}))
    if "peak_cuda_allocated_bytes" in best["plain"]:
        summary["workbench_peak_cuda_allocated_bytes"] = best["workbench"]["peak_cuda_allocated_bytes"]
        summary["plain_peak_cuda_allocated_bytes"] = best["plain"]["peak_cuda_allocated_bytes"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
