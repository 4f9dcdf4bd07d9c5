"""The live lock of a run folder: who trains there now, seen by every process on the machine.

``.live.json`` in the run folder names the owner (pid, host, "the app" / "the CLI"); its mtime
is a heartbeat touched every ``HEARTBEAT_S``. A lock untouched for ``STALE_AFTER_S``, or whose
process is gone (same host), belongs to a run that died without cleaning up (kill -9) and
counts for nothing. A pointer per live run under the workbench home lets every process find
every live run, wherever its folder is.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.run_folder import RunFolder, fsync_write

HEARTBEAT_S = 2.0
STALE_AFTER_S = 20.0


@dataclass(frozen=True)
class LiveInfo:
    pid: int
    host: str
    started: float
    owner: str  # "the app", "the CLI", ... (how other processes name who trains)
    heartbeat: float  # the lock file's mtime


def read_live(lock_file: Path) -> LiveInfo | None:
    try:
        raw = json.loads(lock_file.read_text(encoding="utf-8"))
        heartbeat = lock_file.stat().st_mtime
    except (OSError, ValueError):
        return None
    try:
        info = LiveInfo(int(raw["pid"]), str(raw["host"]), float(raw["started"]), str(raw.get("owner", "")),
                        heartbeat)
    except (KeyError, TypeError, ValueError):
        return None
    if time.time() - heartbeat > STALE_AFTER_S:
        return None
    if info.host == socket.gethostname() and not pid_alive(info.pid):
        return None
    return info


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_body(lock_file: Path) -> str | None:
    try:
        return lock_file.read_text(encoding="utf-8")
    except OSError:
        return None


def registry_dir() -> Path:
    """One pointer per live run under the workbench home, so every process on this machine
    finds every live run, wherever its folder is."""
    from workbench.paths import home

    path = home() / "live"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pointer(folder: RunFolder) -> Path:
    digest = hashlib.sha1(str(folder.path.resolve()).encode()).hexdigest()[:16]
    return registry_dir() / f"{digest}.json"


def live_runs() -> list[RunFolder]:
    """Runs that hold a live lock now, on this machine's workbench home; stale pointers are removed."""
    found = []
    for pointer in sorted(registry_dir().glob("*.json")):
        try:
            folder = RunFolder(json.loads(pointer.read_text(encoding="utf-8"))["run"])
        except (OSError, ValueError, KeyError, TypeError):
            pointer.unlink(missing_ok=True)
            continue
        if folder.live() is None:  # the lock is written before its pointer: no lock, no run
            pointer.unlink(missing_ok=True)
            continue
        found.append(folder)
    return found


class LiveLock:
    """The lock file plus a heartbeat thread; released (and the pointer removed) on exit."""

    def __init__(self, folder: RunFolder, owner: str):
        self.folder, self.owner = folder, owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handed_back: str | None = None  # the supervisor's lock body, after take_over

    def acquire(self) -> "LiveLock":
        folder = self.folder
        folder.path.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "owner": self.owner})
        for _ in range(2):
            try:
                fd = os.open(folder.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = folder.live()
                if holder is not None:
                    raise UserError(f"Run {folder.path} is being trained by {holder.owner or 'another process'} "
                                    f"(pid {holder.pid} on {holder.host}): stop it there, or wait for it to end.")
                folder.lock_file.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            break
        else:
            raise UserError(f"Could not take the live lock of {folder.path}: another process keeps creating it.")
        fsync_write(_pointer(folder), json.dumps({"run": str(folder.path.resolve())}))
        self._thread = threading.Thread(target=self._beat, name="workbench-heartbeat", daemon=True)
        self._thread.start()
        return self

    def take_over(self, from_pid: int) -> "LiveLock":
        """Take the lock that a supervisor (``from_pid`` on this host) holds for the processes it
        launched, so the lock names the process that trains: if the supervisor dies (the app is
        closed), the run it started still shows as live. ``release`` hands it back."""
        folder = self.folder
        holder = folder.live()
        if holder is None or holder.pid != from_pid or holder.host != socket.gethostname():
            return self.acquire()  # launched by hand (a cluster node script): an ordinary lock
        self._handed_back = _read_body(folder.lock_file)
        fsync_write(folder.lock_file, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": holder.started, "owner": self.owner}))
        fsync_write(_pointer(folder), json.dumps({"run": str(folder.path.resolve())}))
        self._thread = threading.Thread(target=self._beat, name="workbench-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.folder.lock_file)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._handed_back is not None:  # the supervisor holds it until every process has ended
            fsync_write(self.folder.lock_file, self._handed_back)
            return
        self.folder.lock_file.unlink(missing_ok=True)
        _pointer(self.folder).unlink(missing_ok=True)

    def __enter__(self) -> "LiveLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
