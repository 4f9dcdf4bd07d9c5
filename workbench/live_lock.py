"""The live lock of a run folder: who trains there now, seen by every process on the machine.

``.live.json`` in the run folder names the owner (pid, its start time, host, "the app" / "the
CLI") and a token for this one acquisition; its mtime is a heartbeat touched every
``HEARTBEAT_S``. On this host a lock is held exactly while its process lives (the pid exists
and started when the lock says: a reused pid does not count), whatever its heartbeat: a run
paused by Ctrl-Z or a stalled disk keeps its folder. Only a lock from another host (a shared
disk), which this host cannot ask about, goes stale after ``STALE_AFTER_S`` without a beat.

A process whose lock was taken over anyway (another host took a stale lock) finds out at its
next write (``ensure_held``) and stops writing there. A pointer per live run under the
workbench home lets every process find every live run, wherever its folder is.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.paths import fsync_write

HEARTBEAT_S = 2.0
STALE_AFTER_S = 20.0


@dataclass(frozen=True)
class LiveInfo:
    pid: int
    host: str
    started: float
    owner: str  # "the app", "the CLI", ... (how other processes name who trains)
    heartbeat: float  # the lock file's mtime
    token: str = ""  # this acquisition's, so a process can tell its own lock from a later one


class LockLost(RuntimeError):
    """This process's live lock now names another process: it must not write to the run any more."""


def read_live(lock_file: Path) -> LiveInfo | None:
    try:
        raw = json.loads(lock_file.read_text(encoding="utf-8"))
        heartbeat = lock_file.stat().st_mtime
    except (OSError, ValueError):
        return None
    try:
        info = LiveInfo(int(raw["pid"]), str(raw["host"]), float(raw["started"]), str(raw.get("owner", "")),
                        heartbeat, str(raw.get("token", "")))
        proc_start = raw.get("proc_start")
        proc_start = None if proc_start is None else float(proc_start)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if info.host == socket.gethostname():
        if not pid_alive(info.pid, proc_start):
            return None
        if proc_start is not None:
            return info  # its process lives: held however long since its last beat
    if time.time() - heartbeat > STALE_AFTER_S:
        return None
    return info


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it cannot be read."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` exists on this machine (another user's process counts) and, given
    ``started``, is the process that started then, not a later one that reuses its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is None:
        return True
    now = process_start(pid)
    return now is None or abs(now - started) < 1.0


# The locks this process holds, by run folder: a write deep in Trainer checks its lock here.
_HELD: dict[str, "LiveLock"] = {}


def ensure_held(run_dir: str | Path) -> None:
    """Raise ``LockLost`` when this process holds the lock of ``run_dir`` no more (another
    process took it over); nothing when this process never held it (a rank that does not write)."""
    lock = _HELD.get(str(Path(run_dir).expanduser().resolve()))
    if lock is not None:
        lock.ensure()


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


def _pointer(folder) -> Path:
    digest = hashlib.sha1(str(folder.path.resolve()).encode()).hexdigest()[:16]
    return registry_dir() / f"{digest}.json"


class LiveLock:
    """The lock file plus a heartbeat thread; released (and the pointer removed) on exit."""

    def __init__(self, folder, owner: str):
        self.folder, self.owner = folder, owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handed_back: str | None = None  # the supervisor's lock body, after take_over
        self.token = uuid.uuid4().hex

    def _body(self, started: float) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                           "owner": self.owner, "proc_start": process_start(os.getpid()), "token": self.token})

    def _hold(self) -> None:
        _HELD[str(self.folder.path.resolve())] = self
        fsync_write(_pointer(self.folder), json.dumps({"run": str(self.folder.path.resolve())}))
        self._thread = threading.Thread(target=self._beat, name="workbench-heartbeat", daemon=True)
        self._thread.start()

    def holder(self) -> dict | None:
        """The lock file's body when it is not this lock's (None: still ours)."""
        try:
            raw = json.loads(self.folder.lock_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        if isinstance(raw, dict) and raw.get("token") == self.token:
            return None
        return raw if isinstance(raw, dict) else {}

    def ensure(self) -> None:
        taker = self.holder()
        if taker is None:
            return
        who = (f"{taker.get('owner') or 'another process'} (pid {taker.get('pid')} on {taker.get('host')})"
               if taker.get("pid") else "nobody (its lock file was removed)")
        raise LockLost(f"Run {self.folder.path} is no longer this process's: its live lock now names {who}, "
                       "taken while this process was paused or cut off, so it stopped without writing anything "
                       "more there; that run's files are the other process's now.")

    def acquire(self) -> "LiveLock":
        folder = self.folder
        folder.path.mkdir(parents=True, exist_ok=True)
        body = self._body(time.time())
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
        self._hold()
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
        fsync_write(folder.lock_file, self._body(holder.started))
        self._hold()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.holder() is not None:
                continue  # handed to a launched rank, or taken: its holder beats, not this process
            try:
                os.utime(self.folder.lock_file)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _HELD.pop(str(self.folder.path.resolve()), None)
        taker = self.holder()
        if taker is not None and self.folder.live() is not None:
            return  # another live process holds it now: its lock and pointer are its own
        if self._handed_back is not None:  # the supervisor holds it until every process has ended
            fsync_write(self.folder.lock_file, self._handed_back)
            return
        self.folder.lock_file.unlink(missing_ok=True)
        _pointer(self.folder).unlink(missing_ok=True)

    def __enter__(self) -> "LiveLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
