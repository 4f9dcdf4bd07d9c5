"""Shared by the training tests: one session per test process, and the run folder's checkpoints."""

from pathlib import Path

from workbench.run_folder import COMPLETE as MARKER, RunFolder
from workbench.session import Workbench

SESSION = Workbench()


def start_job(config, resume: bool = False):
    """Start a job the way the app does (the session refuses a second one while one runs)."""
    return SESSION.start_training(config, resume=resume)


def current_job():
    return SESSION.job


def checkpoints(run_dir):
    return RunFolder(run_dir).checkpoints()


def is_complete(path) -> bool:
    return (Path(path) / MARKER).is_file()


def newest_complete(run_dir):
    return RunFolder(run_dir).newest_complete()
