"""Scale-out throughput: one process against DDP and FSDP2 with 2 processes, on the same work.

The same demo run (model, data, LoRA, effective batch, steps) four ways, each in fresh
processes: one process with as many threads as the two ranks have together (the baseline of
``ddp_speedup``), one process with one thread (the workbench's own setting for tiny models on
the CPU, see docs/DESIGN.md), and ``train --strategy ddp|fsdp --nproc 2`` (one thread per rank,
torchrun's default). Throughput is measured from the run's own metrics rows (one per step),
from the end of the warm-up steps to the last step, so process start and model loading are
not counted; ``*_wall_s`` is the whole command, start-up included.

    python benchmarks/scale_out.py [--steps 80] [--warmup 5] [--batch 8] [--threads 2]

Last line: {"single_samples_per_s", "single_1thread_samples_per_s", "ddp_samples_per_s",
"fsdp_samples_per_s", "ddp_speedup", "fsdp_speedup", "ddp_speedup_vs_best_single", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One process with N threads: the workbench pins tiny CPU models to one thread, so the
# baseline run replaces that rule for this benchmark only.
SINGLE = """
import sys, torch
import workbench.training.loading as loading
threads = int(sys.argv[2])
loading.limit_threads_for_tiny_models = lambda model: torch.set_num_threads(threads)
from workbench.settings import RunConfig
from workbench.training import JobState, TrainingJob
job = TrainingJob(RunConfig.load(sys.argv[1]))
sys.exit(0 if job.run() == JobState.FINISHED else 1)
"""


def config_file(args, folder: Path) -> Path:
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig

    ensure_demo()
    config = RunConfig.from_dict(DEMO_TRAINING).replace(training={
        "max_steps": args.warmup + args.steps, "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 0, "warmup_ratio": 0.0})
    return config.save(folder / "bench.yaml")


def steady_rate(out: Path, warmup: int, batch: int) -> float:
    """Samples per second from the metrics rows between the end of warm-up and the last step."""
    from workbench.run_folder import RunFolder

    train = {r["step"]: r["time"] for r in RunFolder(out).metrics() if r.get("kind") == "train"}
    last = max(train)
    return (last - warmup) * batch / (train[last] - train[warmup])


def run(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def with_output(config: Path, out: Path) -> Path:
    from workbench.settings import RunConfig

    path = config.with_name(f"{out.name}.yaml")
    RunConfig.load(config).replace(training={"output_dir": str(out)}).save(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="Timed optimizer steps (after warm-up).")
    parser.add_argument("--warmup", type=int, default=5, help="Steps not timed (first-step costs).")
    parser.add_argument("--batch", type=int, default=8, help="Effective batch: rows per optimizer step.")
    parser.add_argument("--threads", type=int, default=2, help="Threads of the baseline = processes x 1 thread.")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="scale-out-"))
    config = config_file(args, folder)
    result, python = {}, sys.executable
    for name, threads in (("single", args.threads), ("single_1thread", 1)):
        out = folder / name
        wall = run([python, "-c", SINGLE, str(with_output(config, out)), str(threads)],
                   env={"OMP_NUM_THREADS": str(threads)})
        result[f"{name}_samples_per_s"] = round(steady_rate(out, args.warmup, args.batch), 2)
        result[f"{name}_wall_s"] = round(wall, 1)
        print(f"{name}: {result[f'{name}_samples_per_s']} samples/s", file=sys.stderr)
    for strategy in ("ddp", "fsdp"):
        out = folder / strategy
        wall = run([python, "-m", "workbench", "train", str(config), "--strategy", strategy, "--nproc", "2",
                    "--output-dir", str(out)])
        result[f"{strategy}_samples_per_s"] = round(steady_rate(out, args.warmup, args.batch), 2)
        result[f"{strategy}_wall_s"] = round(wall, 1)
        print(f"{strategy}: {result[f'{strategy}_samples_per_s']} samples/s", file=sys.stderr)
    single = result["single_samples_per_s"]
    best = max(single, result["single_1thread_samples_per_s"])
    result.update({
        "ddp_speedup": round(result["ddp_samples_per_s"] / single, 2),
        "fsdp_speedup": round(result["fsdp_samples_per_s"] / single, 2),
        "ddp_speedup_vs_best_single": round(result["ddp_samples_per_s"] / best, 2),
        "steps": args.steps, "batch": args.batch, "threads": args.threads,
        "load_average": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
