"""``python -m workbench train``: the training job in the foreground, with a progress line."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from workbench.errors import UserError
from workbench.settings import PART_MODES, RECIPES, STRATEGIES, RunConfig, field_help


def register(sub) -> None:
    p = sub.add_parser("train", help="Train a LoRA adapter (the demo model and data by default).",
                       description="Train a LoRA adapter. With no config: the embedded demo model and "
                                   "dataset with demo settings. Ctrl-C stops cleanly and saves the adapter. "
                                   "--strategy ddp|fsdp --nproc N runs N processes on this machine through "
                                   "accelerate launch (several machines: `python -m workbench launch`).")
    p.add_argument("config", nargs="?", help="RunConfig YAML (saved by the LoRA tab or a previous run's run.yaml).")
    p.add_argument("--model", help="Base model: 'demo', a preset, a local folder or a hub id (overrides the config).")
    p.add_argument("--dataset", help="Training dataset file (overrides data.train_path); demo-video: the video demo.")
    p.add_argument("--skip-problem-rows", action="store_true",
                   help="Sets data.skip_problem_rows. " + field_help("data", "skip_problem_rows"))
    p.add_argument("--output-dir", help="Run folder. New runs need a new or empty folder; with --resume, the run to continue.")
    p.add_argument("--max-steps", type=int, help="Stop after N optimizer steps (overrides training.max_steps).")
    p.add_argument("--save-steps", type=int, help="Checkpoint every N steps (overrides training.save_steps).")
    p.add_argument("--resume", action="store_true", help="Continue the run in --output-dir from its newest complete checkpoint.")
    p.add_argument("--allow-private-urls", action="store_true", help=field_help("data", "allow_private_urls"))
    p.add_argument("--strategy", choices=STRATEGIES, help=field_help("training", "strategy"))
    p.add_argument("--nproc", type=int, help="Processes on this machine for ddp/fsdp (overrides training.nproc_per_node; "
                                             "0: every GPU, or 2 CPU processes without GPUs).")
    add_part_flags(p)
    p.set_defaults(func=run)


def add_part_flags(p) -> None:
    """--recipe, --vision/--merger/--language frozen|lora|full, --vision-lr, --merger-lr (train, launch)."""
    p.add_argument("--recipe", choices=list(RECIPES), help=field_help("lora", "recipe"))
    for part in ("vision", "merger", "language"):
        p.add_argument(f"--{part}", choices=PART_MODES, help=field_help("lora", part))
    p.add_argument("--vision-lr", type=float, help=field_help("lora", "vision_lr"))
    p.add_argument("--merger-lr", type=float, help=field_help("lora", "merger_lr"))


def part_overrides(args) -> dict:
    """The lora fields the part flags set (none given: the config's own)."""
    names = ("recipe", "vision", "merger", "language", "vision_lr", "merger_lr")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def base_config(config_path: str | None, model: str | None) -> RunConfig:
    """The config file, else defaults for a named model, else the demo's settings."""
    from workbench.demo import DEMO_TRAINING, is_demo

    if config_path:
        return RunConfig.load(config_path)
    if model and not is_demo(model):
        return RunConfig()
    return RunConfig.from_dict(DEMO_TRAINING)


def config_from_args(args) -> RunConfig:
    if not args.config and args.resume and args.output_dir and (Path(args.output_dir) / "run.yaml").is_file():
        config = RunConfig.load(Path(args.output_dir) / "run.yaml")
    else:
        config = base_config(args.config, args.model)
    overrides = {"model": {}, "data": {}, "lora": part_overrides(args), "training": {}}
    if args.model:
        overrides["model"]["name_or_path"] = args.model
    if args.dataset:
        from workbench.demo_video import demo_dataset_file

        overrides["data"]["train_path"] = demo_dataset_file(args.dataset)  # demo-video: the video demo's rows
    if args.skip_problem_rows:
        overrides["data"]["skip_problem_rows"] = True
    if args.output_dir:
        overrides["training"]["output_dir"] = args.output_dir
    if args.max_steps is not None:
        overrides["training"]["max_steps"] = args.max_steps
    if args.save_steps is not None:
        overrides["training"]["save_steps"] = args.save_steps
    if args.allow_private_urls:
        overrides["data"]["allow_private_urls"] = True
    if args.strategy:
        overrides["training"]["strategy"] = args.strategy
    if args.nproc is not None:
        if args.nproc < 0:
            raise UserError(f"--nproc must be 0 (every GPU) or a positive number of processes, got {args.nproc}.")
        overrides["training"]["nproc_per_node"] = args.nproc
    return config.replace(**overrides)


def run(args) -> int:
    from workbench.session import Workbench
    from workbench.training import JobState
    from workbench.training.launcher import LaunchedJob

    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be a positive number, got {args.max_steps}.")

    # On a terminal the step line rewrites itself; into a file or a pipe (a cluster job's log,
    # nohup) every new step is a plain line of its own, never a run of carriage returns.
    terminal = sys.stderr.isatty()
    start, newline = ("\r", "\n") if terminal else ("", "")

    def say(line: str) -> None:  # status lines as they happen, even if the process dies next
        print(f"{start}{line}", file=sys.stderr, flush=True)

    job = Workbench().start_training(config_from_args(args), resume=args.resume, owner="the CLI", on_message=say)
    print(f"run folder: {job.output_dir}", file=sys.stderr)
    launched = isinstance(job, LaunchedJob)  # several processes under accelerate launch
    if launched:  # the ranks run in their own process group: they must not outlive their supervisor
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: job.request_stop(force=True))
    interrupts, shown = 0, None
    while job.running:
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            interrupts += 1
            if launched and interrupts > 1:
                print(f"{newline}ending every rank now; --resume continues from the newest complete checkpoint...",
                      file=sys.stderr)
                job.request_stop(force=True)
                continue
            more = " (Ctrl-C again ends every rank at once)" if launched else ""
            print(f"{newline}stopping at the end of the current step (adapter will be saved){more}...",
                  file=sys.stderr)
            job.request_stop()
            continue
        r = job.metrics.last("train") if job.metrics is not None else None
        if r and job.state == JobState.TRAINING and job.max_steps > 0:
            eta = f" eta {r['eta_s']:.0f}s" if r.get("eta_s") is not None else ""
            loss = f" loss {r['loss']:.4f}" if "loss" in r else ""
            step = max(job.step, int(r.get("step") or 0))
            if terminal:
                print(f"\rstep {step}/{job.max_steps}{loss}{eta}   ", end="", file=sys.stderr, flush=True)
            elif step != shown:
                print(f"step {step}/{job.max_steps}{loss}{eta}", file=sys.stderr, flush=True)
            shown = step
    if terminal:
        print(file=sys.stderr)
    if job.state == JobState.FAILED:
        print(f"error: {job.message}", file=sys.stderr)
        return job.exit_code or 1
    print(job.message)
    return 0
