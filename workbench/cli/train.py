"""``python -m workbench train``: the training job in the foreground, with a progress line."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from workbench.errors import UserError
from workbench.cli.config_flags import add_config_flags, config_overrides
from workbench.run_folder import CONFIG_NAME
from workbench.settings import RunConfig


def register(sub) -> None:
    p = sub.add_parser("train", help="Train a LoRA adapter (the demo model and data by default).",
                       description="Train a LoRA adapter. With no config: the embedded demo model and "
                                   "dataset with demo settings. Ctrl-C stops cleanly and saves the adapter. "
                                   "--strategy ddp|fsdp --nproc N runs N processes on this machine through "
                                   "accelerate launch (several machines: `python -m workbench launch`).")
    p.add_argument("config", nargs="?", help="RunConfig YAML (saved by the LoRA tab or a previous run's run.yaml).")
    p.add_argument("--resume", action="store_true", help="Continue the run in --output-dir from its newest complete checkpoint.")
    add_config_flags(p)
    p.set_defaults(func=run)


def base_config(config_path: str | None, model: str | None, dataset: str | None = None) -> RunConfig:
    """The config file, else defaults for a named model, else the demo's settings (the video demo's for
    ``--dataset demo-video``)."""
    from workbench.demo import DEMO_TRAINING, DEMO_VIDEO_TRAINING, is_demo
    from workbench.demo_video import is_demo_dataset

    if config_path:
        return RunConfig.load(config_path)
    if model and not is_demo(model):
        return RunConfig()
    return RunConfig.from_dict(DEMO_VIDEO_TRAINING if dataset and is_demo_dataset(dataset) else DEMO_TRAINING)


def config_from_args(args) -> RunConfig:
    saved = Path(args.output_dir) / CONFIG_NAME if args.output_dir else None
    if not args.config and args.resume and saved and saved.is_file():
        config = RunConfig.load(saved)
    else:
        config = base_config(args.config, args.name_or_path, args.train_path)
    overrides = config_overrides(args)
    if args.train_path:
        from workbench.demo_video import demo_dataset_file

        overrides["data"]["train_path"] = demo_dataset_file(args.train_path)  # demo-video: the video demo's rows
    if args.nproc_per_node is not None and str(args.nproc_per_node).lstrip("-").isdigit() and int(args.nproc_per_node) < 0:
        raise UserError(f"--nproc must be 0 (every GPU) or a positive number of processes, got {args.nproc_per_node}.")
    return config.replace(**overrides)


def check_max_steps(args) -> None:
    if args.max_steps is None:
        return
    try:
        steps = float(args.max_steps)
    except ValueError:
        steps = 0
    if steps <= 0:
        raise UserError(f"--max-steps must be a positive whole number of optimizer steps, got {args.max_steps!r}.")


def run(args) -> int:
    from workbench.session import Workbench
    from workbench.training import JobState
    from workbench.training.launcher import LaunchedJob

    check_max_steps(args)

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
