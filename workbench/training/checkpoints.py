"""Complete-only checkpoints: a checkpoint counts when its COMPLETE marker exists.

Trainer writes ``checkpoint-N/`` in several files; a kill during that write leaves a
folder without the marker, which resume never takes. The marker is written (and
fsynced) by ``mark_complete`` from the ``on_save`` callback, after Trainer is done.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
log = logging.getLogger("workbench.training")


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def mark_complete(path: str | Path) -> None:
    marker = Path(path) / MARKER
    with open(marker, "w") as f:
        f.write("ok\n")
        f.flush()
        os.fsync(f.fileno())


def newest_complete(run_dir: str | Path) -> Path | None:
    complete = [p for _, p in checkpoints(run_dir) if is_complete(p)]
    return complete[-1] if complete else None


def remove_incomplete(run_dir: str | Path) -> list[Path]:
    """Delete half-written checkpoints (the workbench's own partial writes, never user files)."""
    removed = []
    for _, path in checkpoints(run_dir):
        if not is_complete(path):
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def keep_newest_complete(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep`` (0: keep all). Called only
    after the newest one is marked complete, so at least one complete checkpoint survives."""
    if keep <= 0:
        return []
    complete = [p for _, p in checkpoints(run_dir) if is_complete(p)]
    removed = complete[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
