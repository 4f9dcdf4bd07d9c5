"""One bounded reader for every file a user names as data (dataset files, configs).

``Path.read_bytes`` on ``/dev/zero``, a FIFO or a file that keeps growing reads until the
kernel kills the process; here only a regular file is read, in chunks, and never more than a
limit. The limit is generous (a real dataset of a few GiB still loads) and set with
``$WORKBENCH_MAX_DATASET_GB`` where a bigger one is meant.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from workbench.errors import UserError

DEFAULT_MAX_DATASET_GB = 8.0
LIMIT_ENV = "WORKBENCH_MAX_DATASET_GB"
CHUNK = 16 * 2**20


def max_dataset_bytes() -> int:
    """The largest dataset file read whole: ``$WORKBENCH_MAX_DATASET_GB`` GB, or 8 GB."""
    value = os.environ.get(LIMIT_ENV, "").strip()
    try:
        gigabytes = float(value) if value else DEFAULT_MAX_DATASET_GB
    except ValueError:
        raise UserError(f"${LIMIT_ENV} is '{value[:40]}', not a number of gigabytes: set it like "
                        f"{LIMIT_ENV}=16 or unset it (default {DEFAULT_MAX_DATASET_GB:g}).") from None
    if gigabytes <= 0:
        raise UserError(f"${LIMIT_ENV} is {value}: give a positive number of gigabytes, or unset it.")
    return int(gigabytes * 1e9)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def read_bounded(path: str | Path, limit: int | None = None, what: str = "Dataset file",
                 fix: str = "split it into smaller files") -> bytes:
    """The bytes of the regular file ``path``, refused with a sentence when it is a device, a FIFO,
    a socket, or larger than ``limit`` (default ``max_dataset_bytes()``) when read."""
    path = Path(path)
    if limit is None:
        limit = max_dataset_bytes()
    raise_limit = (f" (set ${LIMIT_ENV} to a larger number of GB if you mean it)" if what == "Dataset file" else "")
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a file: pass the file inside it.") from None
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path.") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror}): check its permissions.") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{path} is a folder, not a file: pass the file inside it.")
        if not stat.S_ISREG(info.st_mode):
            kind = ("a character device" if stat.S_ISCHR(info.st_mode) else "a pipe (FIFO)"
                    if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                    else "a block device" if stat.S_ISBLK(info.st_mode) else "not a regular file")
            raise UserError(f"{what} {path} is {kind}, not a regular file: save the data to a file and pass that.")
        if info.st_size > limit:
            raise UserError(f"{what} {path} is {_size(info.st_size)}, more than the {_size(limit)} read at once"
                            f"{raise_limit}: {fix}.")
        chunks, size = [], 0
        while True:  # counted as read: a file still being written can outgrow its stat size
            chunk = handle.read(min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise UserError(f"{what} {path} grew past the {_size(limit)} read at once while being read"
                                f"{raise_limit}: wait until it is complete, or {fix}.")
            chunks.append(chunk)
    return b"".join(chunks)
