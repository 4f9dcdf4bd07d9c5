"""One rank of a launched run: ``accelerate launch ... -m workbench.training.worker RUN_DIR [--resume]``.

Every rank runs the same ``TrainingJob`` as a one-process run, with a ``RankPlacement``
(``workbench.training.placement``): rank 0 writes the run folder and holds its live lock,
the others train and write nothing. The run's settings come from RUN_DIR/run.yaml, written
by whoever launched it (the app, ``train --strategy``, or ``launch`` for a cluster).

Exit codes: 0 finished or stopped, 2 bad input, 1 anything else. A rank that fails leaves
RUN_DIR/.ranks/rank-N.json saying why, so the supervisor can name the rank that ended the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings

from workbench.errors import UserError
from workbench.run_folder import RunFolder

SUPERVISOR_PID_ENV = "WORKBENCH_SUPERVISOR_PID"  # the process holding the run's live lock until rank 0 takes it
OWNER_ENV = "WORKBENCH_OWNER"  # who started the launch, as other processes name it ("the app", "the CLI")

log = logging.getLogger("workbench.training")


class RankTerminated(Exception):
    """The launcher stopped this rank: another rank failed, or the launch was interrupted."""


_ending = {"now": False}  # once the job has ended, a SIGTERM needs no more sentences: exit at once


def _terminated(signum, frame):
    if _ending["now"]:
        os._exit(143)
    _ending["now"] = True
    raise RankTerminated("this rank was stopped by the launcher (terminated by the launcher) because another "
                         "rank ended or the launch was interrupted")


def init_process_group(local_rank: int) -> None:
    """The process group, before anything loads, with the workbench's collective timeout.

    Trainer would create it later, and on CPU processes without any timeout of its own;
    FSDP2's efficient loading also needs it before the weights load."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from workbench.training.launch_plan import COLLECTIVE_TIMEOUT_S

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "cuda:nccl,cpu:gloo"  # gathers to the CPU (the adapter, memory samples) use gloo
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def check_fresh(folder: RunFolder) -> None:
    """A new run may start only in a folder holding no run yet (launch files are fine)."""
    if folder.checkpoints() or folder.has_final_adapter() or folder.metrics():
        raise UserError(f"Run folder {folder.path} already holds a run (checkpoints, metrics or an adapter): "
                        "add --resume to continue it (the node scripts pass it on), or write the launch files "
                        "into a new folder.")


def load_config(folder: RunFolder):
    from workbench.training.launch_plan import check_strategy

    if not folder.config_file.is_file():
        raise UserError(f"{folder.config_file} does not exist: the worker runs a folder written by "
                        "`python -m workbench launch` or `train --strategy`.")
    config = folder.config()
    check_strategy(config, nodes_allowed=True)
    return config.replace(training={"output_dir": str(folder.path)})


def main(argv=None) -> int:
    from workbench.logs import setup_logging
    from workbench.training.launch_plan import current_rank, write_rank_failure

    parser = argparse.ArgumentParser(prog="python -m workbench.training.worker",
                                     description="One rank of a DDP/FSDP2 run (started by accelerate launch).")
    parser.add_argument("run_dir", help="The run folder holding run.yaml (the same path on every node).")
    parser.add_argument("--resume", action="store_true", help="Continue from the newest complete checkpoint.")
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, _terminated)
    # FSDP2 warns about every view among the model's outputs in case someone edits it in place;
    # Trainer does not, and the FSDP2 adapter matches the DDP and one-process ones (tests/test_scale_out.py)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    folder, rank = RunFolder(args.run_dir), current_rank()
    try:
        config = load_config(folder)
        if not args.resume:
            check_fresh(folder)
        init_process_group(rank.local_rank)
    except UserError as exc:
        if rank.is_main:
            folder.write_status("failed", str(exc))
            folder.append_event(f"[failed] {exc}")
        write_rank_failure(folder, rank.rank, str(exc), secondary=False)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return run_rank(config, folder, rank, resume=args.resume)


def run_rank(config, folder: RunFolder, rank, resume: bool) -> int:
    from workbench.training.launch_plan import is_peer_failure, write_rank_failure
    from workbench.training.job import JobState, TrainingJob
    from workbench.training.placement import RankPlacement

    supervisor = int(os.environ.get(SUPERVISOR_PID_ENV) or 0) or None
    started_by = os.environ.get(OWNER_ENV) or "accelerate launch"
    owner = f"{started_by} (rank 0 of {rank.world} processes, {config.training.strategy})"

    def say(line: str) -> None:
        print(line, flush=True)

    job = TrainingJob(config, resume=resume, owner=owner, prepared=True,
                      placement=RankPlacement(rank, config.training.strategy, supervisor),
                      on_message=say if rank.is_main else None)
    try:
        state = job.run()
    except RankTerminated as exc:  # arrived while the job was already ending (its cleanup)
        state = job.state if job.state in (JobState.FINISHED, JobState.STOPPED) else JobState.FAILED
        job.error = job.error or exc
    _ending["now"] = True
    if state == JobState.FAILED:
        error = job.error
        write_rank_failure(folder, rank.rank, job.message, secondary=error is not None and is_peer_failure(error))
        logging.shutdown()
        sys.stdout.flush()
        # a peer may be gone: tearing down the process group (or the interpreter) could wait on it
        os._exit(job.exit_code or 1)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
