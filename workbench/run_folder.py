"""A run folder: the contract between a training job and whoever watches it.

    run.yaml                  the RunConfig the run started with
    metrics.jsonl             one JSON row per log step (written by rank 0 only)
    status.json               the job's last state and sentence: training | finished | stopped | failed
    events.log                every status line the job said, newest last
    skipped-rows.jsonl        the dataset rows left out (data.skip_problem_rows): file, row, kind, reason
    checkpoint-N/             Trainer's checkpoint; it counts only once its COMPLETE marker exists
    launch/                   a launched run's accelerate config, node scripts and logs
    .stop-request             a launched run's Stop, for rank 0 to read at a step end
    .ranks/rank-N.json        how a rank of a launched run ended when it failed
    .checkpoints-started      the step of every checkpoint this workbench began to write (only
                              those may be removed as half-written)
    adapter_config.json       the final adapter, published last (weights file moved in last)
    adapter_model.safetensors
    processor/                the processor the run used
    .live.json                the live lock: who trains here; its mtime is the heartbeat

A job in this app, one started by the CLI in another process, and a multi-process run on a
cluster are all watched the same way: by reading these files. Nothing here imports torch or
transformers, so listing runs stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.metrics_file import read_metrics
from workbench.paths import fsync_write  # noqa: F401  (written here; others take it from here too)

log = logging.getLogger("workbench.runs")

CONFIG_NAME = "run.yaml"
METRICS_NAME = "metrics.jsonl"
STATUS_NAME = "status.json"
EVENTS_NAME = "events.log"
SKIPPED_ROWS_NAME = "skipped-rows.jsonl"
LOCK_NAME = ".live.json"
STARTED_NAME = ".checkpoints-started"
COMPLETE = "COMPLETE"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)  # weights last: their arrival marks "done"
PROCESSOR_DIR = "processor"
LAUNCH_DIR = "launch"  # the accelerate config, node scripts and their logs of a launched run
LAUNCH_LOG = "launch.log"  # accelerate launch's own output (torchrun's failure summary), in launch/
ACCELERATE_CONFIG = "accelerate.yaml"  # in launch/
STOP_FILE = ".stop-request"  # written by the supervisor (Stop, Ctrl-C); read by rank 0 at each step end
RANKS_DIR = ".ranks"  # rank-N.json: how a rank ended when it failed
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    """Trainer's name for the checkpoint of ``step`` (``checkpoint-N``)."""
    return f"checkpoint-{int(step)}"


def checkpoint_step(path: str | Path | None) -> int | None:
    """The step of a ``checkpoint-N`` folder (any path ending in one), else None."""
    match = _CHECKPOINT.match(Path(path).name) if path else None
    return int(match.group(1)) if match else None

TERMINAL_STATES = ("finished", "stopped", "failed")


@dataclass
class RunStatus:
    """What the Training tab and the CLI show of a run: one shape whether the run is a job of this
    process, a launched run of several processes, or a folder another process writes."""

    state: str  # training | finished | stopped | failed | interrupted | loading | saving | ...
    message: str
    step: int
    max_steps: int
    output_dir: str
    running: bool
    elapsed_s: float = 0.0
    eta_s: float | None = None  # while training only
    loss: float | None = None  # the newest training loss
    processes: int = 1
    strategy: str = ""

    @classmethod
    def from_last_row(cls, last: dict | None, training: bool, **fields) -> "RunStatus":
        """``fields`` plus what the newest training row says: its loss, and its ETA while training."""
        last = last or {}
        return cls(eta_s=last.get("eta_s") if training else None, loss=last.get("loss"), **fields)

    def to_dict(self) -> dict:
        return asdict(self)


class RunFolder:
    """One run's folder and everything known about its layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_NAME

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS_NAME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def processor_dir(self) -> Path:
        return self.path / PROCESSOR_DIR

    def exists(self) -> bool:
        return self.path.is_dir()

    def started_here(self) -> bool:
        """A run this workbench started: a job writes status.json and events.log from its first
        moment (before any checkpoint), a launch writes launch/accelerate.yaml, and only the
        workbench marks checkpoints COMPLETE. Another tool's folder has none of these."""
        own = (STATUS_NAME, EVENTS_NAME, LOCK_NAME, STARTED_NAME, "launch/accelerate.yaml")
        return any((self.path / name).is_file() for name in own) or bool(self.complete_checkpoints())

    def is_run(self) -> bool:
        """A folder the workbench wrote (run.yaml) or a bare adapter folder."""
        return self.config_file.is_file() or (self.path / ADAPTER_CONFIG).is_file()

    # ---- the config -----------------------------------------------------------------
    def config(self):
        """The run's RunConfig, or None when there is no run.yaml (a bare adapter folder)."""
        from workbench.settings import RunConfig

        return RunConfig.load(self.config_file) if self.config_file.is_file() else None

    def config_summary(self) -> tuple[str, int]:
        """(base model, max_steps) from run.yaml without validating it ("" and 0 when unreadable)."""
        import yaml

        from workbench.strict_yaml import StrictLoader  # an alias bomb in a run.yaml must not hang the runs list

        try:
            raw = yaml.load(self.config_file.read_text(encoding="utf-8"), Loader=StrictLoader) or {}  # noqa: S506
            return (str(raw.get("model", {}).get("name_or_path") or ""),
                    int(raw.get("training", {}).get("max_steps") or 0))
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
            return "", 0

    # ---- metrics ----------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """Every metrics row; a torn last line (a kill mid-write) is skipped."""
        return read_metrics(self.metrics_file)

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keep the rows up to ``last_step`` (resume logs the later steps again)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= last_step]
        fsync_write(self.metrics_file, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # ---- status -----------------------------------------------------------------------
    def status(self) -> dict:
        try:
            raw = json.loads(self.status_file.read_text(encoding="utf-8"))
            return raw if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_status(self, state: str, message: str, step: int = 0, max_steps: int = 0, **extra) -> None:
        fsync_write(self.status_file, json.dumps({"state": state, "message": message, "step": step,
                                                  "max_steps": max_steps, "time": time.time(), **extra}))

    def append_event(self, line: str) -> None:
        with open(self.events_file, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    @property
    def skipped_rows_file(self) -> Path:
        return self.path / SKIPPED_ROWS_NAME

    def write_skipped_rows(self, rows: list[dict]) -> None:
        """The rows a run left out, one JSON object a line, written whole (a resume writes its own list;
        none left out: no file)."""
        if not rows:
            self.skipped_rows_file.unlink(missing_ok=True)
            return
        fsync_write(self.skipped_rows_file, "".join(json.dumps(row) + "\n" for row in rows))

    def skipped_rows(self) -> list[dict]:
        try:
            text = self.skipped_rows_file.read_text(encoding="utf-8")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self, last: int = 40) -> list[str]:
        try:
            return self.events_file.read_text(encoding="utf-8", errors="replace").splitlines()[-last:]
        except OSError:
            return []

    # ---- checkpoints ------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir()
                 if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
        return sorted(found)

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        return [(n, p) for n, p in self.checkpoints() if (p / COMPLETE).is_file()]

    def newest_complete(self) -> Path | None:
        complete = self.complete_checkpoints()
        return complete[-1][1] if complete else None

    @staticmethod
    def mark_complete(checkpoint: str | Path) -> None:
        fsync_write(Path(checkpoint) / COMPLETE, "ok\n")

    def note_checkpoint_started(self, step: int) -> None:
        """Recorded before Trainer writes checkpoint-<step>, so a half-written one is known to be ours."""
        with open(self.path / STARTED_NAME, "a", encoding="utf-8") as f:
            f.write(f"{int(step)}\n")
            f.flush()
            os.fsync(f.fileno())

    def started_checkpoints(self) -> set[int]:
        try:
            lines = (self.path / STARTED_NAME).read_text(encoding="utf-8").split()
        except OSError:
            return set()
        return {int(line) for line in lines if line.isdigit()}

    def remove_incomplete(self) -> list[Path]:
        """Delete half-written checkpoints this workbench began to write; any other checkpoint-N
        without a COMPLETE marker (copied in, another tool's) is left alone and never resumed."""
        removed, ours = [], self.started_checkpoints()
        for step, path in self.checkpoints():
            if (path / COMPLETE).is_file():
                continue
            if step not in ours:
                log.warning("leaving %s alone: not a checkpoint this workbench wrote", path)
                continue
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def keep_newest_complete(self, keep: int, best: Path | None = None) -> list[Path]:
        """Delete the oldest complete checkpoints beyond ``keep`` (0: keep all), never the newest nor
        ``best`` (the best by the eval metric: then up to ``keep`` + 1 remain when ``keep`` is 1, as
        transformers' ``rotate_checkpoints`` does). Called only after the newest one is marked
        complete, so at least one complete checkpoint survives."""
        if keep <= 0:
            return []
        complete = [p for _, p in self.complete_checkpoints()]
        protected = {complete[-1]} if complete else set()
        if best is not None and any(p.name == Path(best).name for p in complete):
            protected.add(self.path / Path(best).name)
        excess = len(complete) - max(keep, len(protected))
        removed = [p for p in complete if p not in protected][:max(excess, 0)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    # ---- the adapter --------------------------------------------------------------------
    def has_final_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    def adapter_dir(self) -> Path | None:
        """The folder to load: the final adapter, else the newest complete checkpoint holding one."""
        if (self.path / ADAPTER_CONFIG).is_file():
            return self.path
        for _, path in reversed(self.complete_checkpoints()):
            if (path / ADAPTER_CONFIG).is_file():
                return path
        return None

    def publish_adapter(self, staging: Path) -> None:
        """Move a fully written adapter from ``staging`` into the run (config first, weights last)."""
        for name in ADAPTER_FILES:
            os.replace(staging / name, self.path / name)
        shutil.rmtree(staging, ignore_errors=True)

    @property
    def staging_dir(self) -> Path:
        return self.path / ".adapter-saving"

    # ---- the live lock ------------------------------------------------------------------
    def live(self):
        """Who trains in this folder now (a ``LiveInfo``), or None: no lock, or a stale one."""
        from workbench.live_lock import read_live

        return read_live(self.lock_file)

    def acquire(self, owner: str):
        """Take the live lock for a job in this process; UserError when someone else trains here."""
        from workbench.live_lock import LiveLock

        return LiveLock(self, owner).acquire()

    # ---- the state people see -----------------------------------------------------------
    def state(self) -> str:
        """training | finished | stopped | failed | interrupted | empty.

        interrupted: it has checkpoints but its process died without saying how it ended (a
        kill); empty: it never saved anything.
        """
        if self.live() is not None:
            return "training"
        recorded = self.status().get("state")
        if recorded in TERMINAL_STATES:
            return recorded
        if self.has_final_adapter():
            return "finished"
        if self.complete_checkpoints():
            return "interrupted"
        return "empty"

    def resumable(self) -> bool:
        """A run that stopped early and can continue from a complete checkpoint."""
        state = self.state()
        if state in ("training", "empty") or self.newest_complete() is None:
            return False
        if state == "finished":
            return False
        return True


def live_runs() -> list[RunFolder]:
    """Runs that hold a live lock now, on this machine's workbench home; stale pointers are removed."""
    from workbench.live_lock import registry_dir

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
