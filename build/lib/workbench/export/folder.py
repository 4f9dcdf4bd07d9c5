"""Where an export is written: a hidden staging folder beside --out, moved in whole at the end.

A kill at any moment leaves either no --out at all (or the empty folder the user gave) and a
hidden ``.NAME.exporting-PID`` beside it, which the next export to that name removes once
its process is gone. Nothing that looks like a finished model ever holds half the files.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from workbench.errors import UserError
from workbench.live_lock import pid_alive

log = logging.getLogger("workbench.export")
STAGING_TAG = ".exporting-"
# Room left free beyond the files themselves (file-system blocks, the index, the card).
DISK_MARGIN_BYTES = 64 * 2**20


class OutFilled(UserError):
    """--out stopped being an empty folder while the export ran: the finished export stays in staging."""


def out_folder(value: str) -> Path:
    """--out as the real folder it names: a link (or a linked parent) is followed, so the staging
    folder sits beside the folder that will hold the export and the final rename replaces no link."""
    given = Path(value).expanduser().absolute()
    return given.resolve()


def check_out_folder(out: Path) -> None:
    if out.is_symlink():
        raise UserError(f"The output folder (--out) {out} is a link: give the folder it points to instead.")
    if out.is_file():
        raise UserError(f"The output folder (--out) {out} is a file: choose a new folder for the export.")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"The output folder (--out) {out} already holds files: choose a new or empty folder "
                        "(nothing was overwritten).")
    if out.name.startswith(".") and STAGING_TAG in out.name:
        raise UserError(f"The output folder (--out) {out} is named like an export's staging folder: choose another name.")


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(out: Path, needed: int) -> int:
    """Free bytes where --out will be; refuses when the export would not fit. Checked before any write."""
    free = shutil.disk_usage(existing_ancestor(out.parent)).free
    if free < needed + DISK_MARGIN_BYTES:
        raise UserError(f"The disk holding {out} has {human(free)} free, and this export needs {human(needed)} "
                        "(plus a little room): free some space or choose an output folder on another disk.")
    return free


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def remove_stale_staging(out: Path) -> list[Path]:
    """Staging folders of exports to ``out`` whose process died (a kill, a power cut)."""
    removed = []
    for path in out.parent.glob(f".{out.name}{STAGING_TAG}*"):
        pid = path.name.rsplit(STAGING_TAG, 1)[1].split("-")[0]
        if path.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            log.warning("removing the staging folder of an export that did not finish: %s", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = out.parent / f".{out.name}{STAGING_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out`` in one rename (an empty ``out`` is replaced).
    When ``out`` stopped being an empty folder meanwhile, both stay as they are: the export is
    kept in ``staging`` and the sentence says where."""
    for path in staging.iterdir():
        fsync_file(path)
    fsync_dir(staging)
    filled = OutFilled(f"The output folder (--out) {out} was filled or replaced by something else while exporting, "
                       f"so it was left as it is; the finished export is in {staging}: move or rename that folder "
                       "yourself.")
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise filled
    try:
        os.replace(staging, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise filled from None
        raise
    fsync_dir(out.parent)


def copy_files(names: list[Path], dest: Path) -> None:
    for path in names:
        shutil.copyfile(path, dest / path.name)
