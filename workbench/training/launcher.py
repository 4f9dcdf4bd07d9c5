"""A DDP/FSDP2 run on this machine: ``accelerate launch`` as a child process, supervised.

``LaunchedJob`` has the face of ``TrainingJob`` (state, message, step, status(), request_stop(),
wait(), metrics, log_tail), so the session, the Training tab and the CLI treat both alike. It
writes run.yaml and the accelerate config into the run folder, holds the run's live lock until
rank 0 takes it over, starts the launcher in its own process group (a Ctrl-C in the terminal
reaches the supervisor, which asks every rank to stop at a step boundary, not the ranks
themselves), and watches the run folder: rank 0's status lines, metrics and checkpoints.

When the launch ends badly it writes the one sentence people see: which rank ended the run
(torchrun's failure table and the ranks' own records) and the newest complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from workbench.metrics_file import MetricsTail
from workbench.run_folder import RunFolder, RunStatus
from workbench.training.launch_plan import (ACCELERATE_CONFIG, LAUNCH_DIR, LAUNCH_LOG, accelerate_config,
                                            check_strategy, clear_rank_failures, clear_stop,
                                            explain_launch_failure, failed_processes, free_port,
                                            procs_per_node, request_stop, split_batch, worker_command,
                                            write_yaml)
from workbench.training.job import TERMINAL, JobState, prepare_output_dir

log = logging.getLogger("workbench.training")
POLL_S = 0.5
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the workbench package


class RowsView:
    """``metrics.last(kind)`` over the run's metrics file, as ``MetricsBuffer`` offers it."""

    def __init__(self, tail: MetricsTail):
        self._tail = tail

    def last(self, kind: str | None = None) -> dict | None:
        for row in reversed(self._tail.rows()):
            if kind is None or row.get("kind") == kind:
                return row
        return None

    def since(self, index: int = 0) -> list[dict]:
        return self._tail.rows()[index:]

    def __len__(self) -> int:
        return len(self._tail.rows())


class LaunchedJob:
    def __init__(self, config, resume: bool = False, on_message=None, owner: str = "the app"):
        check_strategy(config)
        self.resume, self.owner, self.on_message = resume, owner, on_message
        self.output_dir = prepare_output_dir(config, resume)
        self.folder = RunFolder(self.output_dir)
        self.config = config.replace(training={"output_dir": str(self.output_dir)})
        self.nproc = procs_per_node(self.config.training)
        self.split = split_batch(self.config.training, self.nproc)
        self.state, self.message = JobState.IDLE, "Not started."
        self.step, self.max_steps = 0, max(self.config.training.max_steps, 0)
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.log_tail: deque[str] = deque(maxlen=200)
        self.exit_code = 0
        self.metrics = RowsView(MetricsTail(self.folder.metrics_file))
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = None
        self._stop_requested = False
        self._events_offset = 0

    # ---- the face of a TrainingJob ------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def launch_dir(self) -> Path:
        return self.folder.path / LAUNCH_DIR

    def status(self) -> dict:
        end = self.ended_at or time.time()
        return RunStatus.from_last_row(self.metrics.last("train"), self.state == JobState.TRAINING,
                                       state=self.state.value, message=self.message, step=self.step,
                                       max_steps=self.max_steps, output_dir=str(self.output_dir), running=self.running,
                                       elapsed_s=end - self.started_at if self.started_at else 0.0,
                                       processes=self.nproc, strategy=self.config.training.strategy).to_dict()

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def request_stop(self, force: bool = False) -> str:
        """Every rank stops at the end of its current step with a checkpoint. ``force``: end every
        rank now (SIGTERM to the launch); the run resumes from its newest complete checkpoint."""
        if self.state in TERMINAL or not self.running:
            return f"The run already ended ({self.state.value})."
        if force and self._process is not None:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._note("Ending every rank now; the run can resume from its newest complete checkpoint.")
            return self.message
        if self._stop_requested:
            return "Stop already requested: every rank stops at the end of the current step."
        self._stop_requested = True
        request_stop(self.folder)
        self._note("Stop requested: every rank stops at the end of the current step and saves a checkpoint.")
        return self.message

    # ---- start --------------------------------------------------------------------------
    def start(self) -> None:
        """Take the live lock (so every watcher sees the run at once), write the launch files,
        start ``accelerate launch`` and the thread that watches it."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self.folder.acquire(f"{self.owner} (accelerate launch, {self.nproc} processes)")
        try:
            self._spawn()
        except BaseException:
            self._lock.release()
            raise
        self._thread = threading.Thread(target=self._watch, name="workbench-launch", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.started_at = time.time()
        self.config.save(self.folder.config_file)
        clear_stop(self.folder)
        clear_rank_failures(self.folder)
        config_file = write_yaml(self.launch_dir / ACCELERATE_CONFIG,
                                 accelerate_config(self.config, 1, self.nproc, main_port=free_port()))
        argv = worker_command(config_file, self.folder.path, resume=self.resume)
        strategy = self.config.training.strategy.upper()
        self._say(JobState.LOADING, f"Starting {self.nproc} processes ({strategy}) with accelerate launch. "
                                    f"{self.split.sentence()}")
        env = {**os.environ, "WORKBENCH_SUPERVISOR_PID": str(os.getpid()), "WORKBENCH_OWNER": self.owner,
               "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)}
        self._launch_log = open(self.launch_dir / LAUNCH_LOG, "ab")
        self._process = subprocess.Popen(argv, stdout=self._launch_log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("launched %s (pid %s)", " ".join(argv), self._process.pid)

    # ---- watching -----------------------------------------------------------------------
    def _watch(self) -> None:
        try:
            while self._process.poll() is None:
                self._read_folder()
                time.sleep(POLL_S)
            self._read_folder()
            self._finish(self._process.returncode)
        except Exception as exc:  # noqa: BLE001 - the watcher must always end the job in a state
            log.error("watching the launch failed", exc_info=exc)
            self._say(JobState.FAILED, f"Lost track of the launch ({exc}); details are in the log.")
        finally:
            self.ended_at = time.time()
            self._launch_log.close()
            self._lock.release()

    def _read_folder(self) -> None:
        for line in self._new_events():
            self.log_tail.append(line)
            if self.on_message is not None:
                self.on_message(line)
        status = self.folder.status()
        if status.get("state") in {s.value for s in JobState}:
            self.state, self.message = JobState(status["state"]), status.get("message", self.message)
        self.max_steps = int(status.get("max_steps") or self.max_steps)
        last = self.metrics.last("train")
        if last is not None:
            self.step = int(last.get("step") or self.step)
        self.step = max(self.step, int(status.get("step") or 0))

    def _new_events(self) -> list[str]:
        try:
            with open(self.folder.events_file, "rb") as f:
                f.seek(self._events_offset)
                chunk = f.read()
        except OSError:
            return []
        complete = chunk.rfind(b"\n") + 1
        self._events_offset += complete
        return chunk[:complete].decode("utf-8", errors="replace").splitlines()

    def _finish(self, returncode: int) -> None:
        status = self.folder.status()
        recorded = status.get("state")
        if recorded in ("finished", "stopped") and (returncode == 0 or self.folder.has_final_adapter()):
            self.state, self.message = JobState(recorded), status.get("message", "")
            return
        output = (self.launch_dir / LAUNCH_LOG).read_text(encoding="utf-8", errors="replace")[-200_000:]
        ends = failed_processes(output)
        self.exit_code = 2 if ends and all(e.exitcode == 2 for e in ends) else 1
        if returncode == 0:
            sentence = "The launch ended without saying how the run ended; details are in the log."
        else:
            sentence = explain_launch_failure(self.folder, returncode, output)
        self._say(JobState.FAILED, sentence)

    # ---- saying things ------------------------------------------------------------------
    def _note(self, message: str) -> None:
        """A line for this supervisor's watchers only (rank 0 owns the run's events while it lives)."""
        self.message = message
        line = f"{time.strftime('%H:%M:%S')} [{self.state.value}] {message}"
        self.log_tail.append(line)
        log.info(line)
        if self.on_message is not None:
            self.on_message(line)

    def _say(self, state: JobState, message: str) -> None:
        """A status line written to the run folder: only while no rank writes there (before
        the launch, after it ended)."""
        self.state = state
        self._note(message)
        line = self.log_tail[-1]
        try:
            self.folder.write_status(state.value, message, self.step, self.max_steps)
            self.folder.append_event(line)
            self._events_offset = self.folder.events_file.stat().st_size
        except OSError:
            log.warning("could not write the status of %s", self.folder.path, exc_info=True)
