"""How a failed run is told to people: one sentence with the fix, and where it can resume from."""

from __future__ import annotations

import errno
import os
import pickle
import re

from workbench.run_folder import RunFolder
from workbench.training.bridge import NonFiniteError
from workbench.training.launch_plan import is_peer_failure


def failure_message(exc: BaseException, folder: RunFolder, log) -> str:
    """The sentence for a run that raised ``exc``; unexpected errors also log their traceback."""
    last = folder.newest_complete()
    kept = f"the newest complete checkpoint is {last.name}" if last else "no complete checkpoint was saved yet"
    resume = f"`python -m workbench train --resume --output-dir {folder.path}` (or Resume on the Training tab)"
    if isinstance(exc, NonFiniteError):
        good = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        return f"Training stopped: {exc}; {good}. Lower the learning rate or check the data."
    if in_launch() and is_peer_failure(exc):
        log.warning("training failed: %r", exc, exc_info=exc)
        return (f"Training stopped on every rank: {first_line(exc)[:200]}; {kept}. Look in each node's "
                f"launch log for the rank that ended first, then continue with {resume}.")
    if isinstance(exc, pickle.UnpicklingError):
        where = f"in {last}" if last else "of this run"
        log.warning("training failed: %r", exc)
        return (f"A checkpoint file {where} holds more than plain tensors and was not loaded "
                f"({first_line(exc)[:160]}). Delete that checkpoint folder; resume then takes the one before it.")
    if isinstance(exc, FileNotFoundError):
        log.warning("training failed: %r", exc)
        return (f"A file disappeared during training ({exc.filename or first_line(exc)}); {kept}. "
                f"Put it back, then continue with {resume}.")
    if is_disk_full(exc):
        log.warning("training failed: %r", exc)
        return f"The disk holding {folder.path} is full; {kept}. Free some space, then continue with {resume}."
    if is_out_of_memory(exc):
        log.warning("training failed: %r", exc)
        return oom_message(exc)
    log.error("training failed", exc_info=exc)
    return f"Training failed: {type(exc).__name__}: {first_line(exc)[:300]}. Details are in the log; {kept}."


def in_launch() -> bool:
    """This process is one rank of several (under accelerate launch / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# How a full disk reaches Python when the write happens in C++ or Rust, without an errno:
# torch.save ("[enforce fail at inline_container.cc:672] . unexpected pos ..." or "file write
# failed") and safetensors ("IoError(Os { code: 28, kind: StorageFull ... })").
_DISK_FULL_WORDS = ("inline_container.cc", "PytorchStreamWriter failed writing", "file write failed",
                    "No space left on device", "StorageFull")


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` (or what it was raised from) is a write that failed for lack of disk space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if any(word in str(exc) for word in _DISK_FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def oom_message(exc: BaseException) -> str:
    import torch

    match = re.search(r"GPU (\d+)", str(exc))
    device = f"cuda:{match.group(1)}" if match else "a device"
    peak = ""
    if match and torch.cuda.is_available():
        peak = f" (peak reserved {torch.cuda.max_memory_reserved(int(match.group(1))) / 2**30:.1f} GiB)"
    return (f"Out of memory on {device}{peak}. Open the Memory planner with these settings and apply its "
            "suggestion: lower max_pixels or max_length, turn on gradient checkpointing, or use more GPUs.")
