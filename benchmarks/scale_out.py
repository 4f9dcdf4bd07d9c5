"""Scale-out throughput: one process against DDP and FSDP2 with 2 processes, on the same work.

The same demo run (model, data, LoRA, effective batch, steps) four ways, each in fresh
processes: one process with as many threads as the two ranks have together (the baseline of
``ddp_speedup``; OpenMP threads wait passively), one process with one thread (the workbench's
own setting for tiny models on the CPU, see docs/DESIGN.md), and ``train --strategy ddp|fsdp
--nproc 2`` (one thread per rank, torchrun's default). Throughput comes from the run's own
metrics rows, from the first logged step after warm-up to the last step, so process start
and model loading are not counted; ``*_wall_s`` is the whole command, start-up included.

    python benchmarks/scale_out.py [--model demo|medium] [--rounds 3] [--steps 80] [--warmup 5] [--batch 8]

A fifth run, ``plain_ddp``, is a bare Trainer + peft script under torchrun with the same
settings: the A/B for what the workbench's job adds to a DDP step.

Last line: {"single_samples_per_s", "single_1thread_samples_per_s", "ddp_samples_per_s",
"fsdp_samples_per_s", "plain_ddp_samples_per_s", "ddp_speedup", "fsdp_speedup",
"ddp_speedup_vs_best_single", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
import contextlib, sys, torch
import workbench.training.job as job_module
threads = int(sys.argv[2])
torch.set_num_threads(threads)
job_module.tiny_model_threads = lambda model: contextlib.nullcontext()
from workbench.settings import RunConfig
from workbench.training import JobState, TrainingJob
job = TrainingJob(RunConfig.load(sys.argv[1]))
sys.exit(0 if job.run() == JobState.FINISHED else 1)
"""


# --model medium: the demo's architecture widened so that arithmetic, not per-op overhead and
# per-step communication, dominates a step (about 4.5M parameters instead of 0.26M).
MEDIUM_TEXT = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2, "layer_types": ["full_attention"] * 4,
               "rope_parameters": {"mrope_section": [8, 12, 12], "rope_theta": 10000.0, "rope_type": "default"}}
MEDIUM_VISION = {"hidden_size": 256, "embed_dim": 64, "num_heads": 2}


def medium_model(demo_model: Path, folder: Path) -> Path:
    """The demo model widened (random weights, its tokenizer and processor): built here, not downloaded."""
    import shutil

    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    raw = json.loads((demo_model / "config.json").read_text())
    raw["text_config"].update(MEDIUM_TEXT)
    raw["vision_config"].update(MEDIUM_VISION)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(raw))
    out = folder / "medium-model"
    model.save_pretrained(out)
    for name in demo_model.iterdir():
        if name.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(name, out / name.name)
    return out

# The A/B for what the workbench adds under DDP: the same model, data, LoRA, split batch and
# Trainer arguments, run by a bare Trainer (no job, no bridge, no stop agreement, no memory
# gather), timed by a callback at the same steps.
PLAIN_DDP = """
import json, sys, time
from pathlib import Path
from transformers import Trainer, TrainerCallback
from workbench.data.collate import Collator
from workbench.settings import RunConfig
from workbench.training.launch_plan import split_batch
from workbench.training.loading import load_model
from workbench.training.lora import apply_lora
from workbench.training.inputs import build_datasets, build_trainer_args
from workbench.training.vision_sync import keep_vision_tower_in_step
config, out, warmup = RunConfig.load(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
split = split_batch(config.training, 2)
config = config.replace(training={"output_dir": str(out), "per_device_train_batch_size": split.per_device,
                                  "gradient_accumulation_steps": split.accumulation})
train, _, processor = build_datasets(config, config.model.name_or_path)
model = apply_lora(load_model(config.model.name_or_path, config, device_map={"": "cpu"}), config.lora, False)
keep_vision_tower_in_step(model)
ends = {}
class Timer(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        ends[state.global_step] = time.time()
trainer = Trainer(model=model, args=build_trainer_args(config, False, ddp_find_unused_parameters=False),
                  train_dataset=train, data_collator=Collator(processor.tokenizer.pad_token_id), callbacks=[Timer()])
trainer.train()
if trainer.args.process_index == 0:
    last = max(ends)
    rate = (last - warmup) * split.effective / (ends[last] - ends[warmup])
    (out / "rate.json").write_text(json.dumps({"samples_per_s": rate}))
# This bare script sometimes aborted after its timed steps, in teardown ("terminate called without
# an active exception" on rank 0, round 2 of 3 in two runs, with and without destroy_process_group);
# its rate is written by then, so every rank leaves at once (the measured steps are unaffected).
import os
sys.stdout.flush()
os._exit(0)
"""


def config_file(args, folder: Path) -> Path:
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig

    demo = ensure_demo()
    model = str(medium_model(demo.model, folder)) if args.model == "medium" else str(demo.model)
    config = RunConfig.from_dict(DEMO_TRAINING).replace(model={"name_or_path": model},
                                                        data={"train_path": str(demo.train)}, training={
        "max_steps": args.warmup + args.steps, "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1, "logging_steps": args.logging_steps, "save_steps": 0,
        "warmup_ratio": 0.0})
    return config.save(folder / "bench.yaml")


def steady_rate(out: Path, warmup: int, batch: int) -> float:
    """Samples per second from the metrics rows between the end of warm-up and the last step."""
    from workbench.run_folder import RunFolder

    train = {r["step"]: r["time"] for r in RunFolder(out).metrics() if r.get("kind") == "train"}
    first, last = min(s for s in train if s >= warmup), max(train)
    return (last - first) * batch / (train[last] - train[first])


def run(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def write_script(folder: Path, text: str) -> Path:
    path = folder / "plain_ddp.py"
    path.write_text(text)
    return path


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
    parser.add_argument("--model", choices=("demo", "medium"), default="demo",
                        help="demo: the embedded tiny model; medium: the same architecture widened (see MEDIUM_TEXT).")
    parser.add_argument("--rounds", type=int, default=1, help="Repeat the five runs, interleaved; medians are reported.")
    parser.add_argument("--runs", default="single,single_1thread,ddp,fsdp,plain_ddp",
                        help="Which runs, comma-separated (e.g. ddp,plain_ddp for the DDP overhead alone).")
    parser.add_argument("--logging-steps", type=int, default=5,
                        help="Metrics row every N steps (each gathers every rank's memory sample).")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="scale-out-"))
    config = config_file(args, folder)
    script = write_script(folder, PLAIN_DDP)
    rates: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    loads = []
    for round_ in range(args.rounds):  # interleaved, so a busy minute of the machine hits every run alike
        # odd rounds run in the reverse order: a machine getting busier or quieter favours no run
        for name, rate, wall in one_round(args, config, script, folder / f"round-{round_}", reverse=round_ % 2 == 1):
            rates.setdefault(name, []).append(rate)
            walls.setdefault(name, []).append(wall)
            print(f"round {round_}: {name} {rate:.2f} samples/s", file=sys.stderr)
        loads.append(os.getloadavg()[0])
    result = {f"{name}_samples_per_s": round(statistics.median(values), 2) for name, values in rates.items()}
    result.update({f"{name}_wall_s": round(statistics.median(values), 1) for name, values in walls.items()})
    single = result.get("single_samples_per_s")
    best = max(single or 0, result.get("single_1thread_samples_per_s") or 0) or None
    ratios = {"ddp_speedup": ("ddp", single), "fsdp_speedup": ("fsdp", single),
              "ddp_speedup_vs_best_single": ("ddp", best),
              "ddp_over_plain_ddp": ("ddp", result.get("plain_ddp_samples_per_s"))}
    for key, (name, base) in ratios.items():
        if base and f"{name}_samples_per_s" in result:
            result[key] = round(result[f"{name}_samples_per_s"] / base, 2)
    if "ddp" in rates and "plain_ddp" in rates:  # per round: both sides met the same minute of the machine
        per_round = [d / p for d, p in zip(rates["ddp"], rates["plain_ddp"])]
        result["ddp_over_plain_ddp_rounds"] = [round(r, 2) for r in per_round]
        result["ddp_over_plain_ddp_median_of_rounds"] = round(statistics.median(per_round), 2)
    result.update({
        "model": args.model, "steps": args.steps, "batch": args.batch, "threads": args.threads,
        "logging_steps": args.logging_steps, "rounds": args.rounds,
        "load_average": round(statistics.median(loads), 2),
    })
    print(json.dumps(result))
    return 0


def one_round(args, config: Path, script: Path, folder: Path, reverse: bool = False):
    """(name, samples/s, wall seconds) of each of the five runs (those ``--runs`` names), in fresh processes."""
    folder.mkdir(parents=True)
    wanted = set(args.runs.split(","))
    runs = [name for name in ("single", "single_1thread", "ddp", "fsdp", "plain_ddp") if name in wanted]
    for name in reversed(runs) if reverse else runs:
        yield (name, *one_run(name, args, config, script, folder))


def one_run(name: str, args, config: Path, script: Path, folder: Path) -> tuple[float, float]:
    python = sys.executable
    out = folder / name
    if name in ("single", "single_1thread"):
        threads = args.threads if name == "single" else 1
        # PASSIVE: idle OpenMP threads sleep instead of spinning. With the default spin, two threads
        # on two cores that other processes also use lost a factor of 4 (docs/scale-out.md).
        wall = run([python, "-c", SINGLE, str(with_output(config, out)), str(threads)],
                   env={"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"})
        return steady_rate(out, args.warmup, args.batch), wall
    if name in ("ddp", "fsdp"):
        wall = run([python, "-m", "workbench", "train", str(config), "--strategy", name, "--nproc", "2",
                    "--output-dir", str(out)])
        return steady_rate(out, args.warmup, args.batch), wall
    out.mkdir()
    wall = run([python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                str(config), str(out), str(args.warmup)])
    return json.loads((out / "rate.json").read_text())["samples_per_s"], wall


if __name__ == "__main__":
    sys.exit(main())
