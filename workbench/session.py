"""The one process-wide owner: the training job, the cached inference model, the devices, the runs.

The app makes one ``Workbench`` at launch and hands it to every tab; each CLI command makes
its own. Rules it enforces:

- One training job on this machine's devices at a time: a second Start (another browser tab,
  or the CLI while the app trains, or the app while the CLI trains) is refused with a sentence
  naming the run that holds them. Other processes' runs are seen through their run folder's
  live lock.
- A run of several processes (``training.strategy`` ddp or fsdp) is started through
  ``accelerate launch`` and supervised by a ``LaunchedJob``, which has the face of a
  ``TrainingJob``; rank 0 of the launch takes the run's live lock over from it.
- Stop reaches a run of another process too: a stop request file in its run folder, read at
  each step end (by rank 0 of a launch, which tells every rank).
- Training and inference never hold the devices at once: starting a job drops the cached
  inference model (waiting for an answer in progress); inference while a job runs is refused.
- Nothing here touches process-global state of transformers or accelerate outside the job.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from workbench.errors import UserError
from workbench.metrics_file import MetricsTail
from workbench.run_folder import RunFolder, RunStatus, live_runs


class DevicesBusy(UserError):
    """The devices are held by a training run (this process's or another's)."""


class Workbench:
    def __init__(self):
        self._lock = threading.Lock()  # start/stop and the inference cache change under it
        self._job = None
        self._inference_lock = threading.Lock()  # one model load or generate at a time
        self._inference = None
        self._inference_key: tuple | None = None
        self._tails: dict[Path, MetricsTail] = {}
        self._strategies: dict[Path, str] = {}
        self._watched: RunFolder | None = None  # a folder the user pointed at (a run launched by hand)
        self._export_lock = threading.Lock()  # a merge reads and writes a model's worth of disk

    # ---- training -------------------------------------------------------------------
    @property
    def job(self):
        """This process's newest training job (running or ended), or None."""
        return self._job

    def training_elsewhere(self) -> RunFolder | None:
        """A live run of another process (the CLI, a launch) on this machine, or None."""
        own = RunFolder(self._job.output_dir) if self._job is not None and self._job.running else None
        return next((run for run in live_runs() if run != own), None)

    def busy_reason(self) -> str | None:
        """Why the devices cannot take a new job or model now (None: they are free)."""
        job = self._job
        if job is not None and job.running:
            return (f"A training job is already running ({job.output_dir}, {job.state.value}, step "
                    f"{job.step}/{job.max_steps}): stop it on the Training tab or wait for it to finish.")
        other = self.training_elsewhere()
        if other is not None:
            holder = other.live()
            who = f"{holder.owner} (pid {holder.pid})" if holder else "another process"
            return (f"Run {other.path} is training in {who} on this machine's devices: wait for it to end or "
                    "stop it there (Ctrl-C in its terminal).")
        return None

    def start_training(self, config, resume: bool = False, owner: str = "the app", on_message=None):
        """Check ``config`` (no global side effects), take the devices, start the job in a thread."""
        from workbench.training.checks import check_run_config
        from workbench.training.job import TrainingJob

        with self._lock:
            reason = self.busy_reason()
            if reason:
                raise DevicesBusy(reason)
            check_run_config(config, check_output_dir=not resume)
            if config.training.strategy in ("ddp", "fsdp"):
                from workbench.training.launcher import LaunchedJob as job_type
            else:
                job_type = TrainingJob
            job = job_type(config, resume=resume, on_message=on_message, owner=owner)
            self._release_inference()
            job.start()  # holds the run's live lock when it returns
            self._job, self._watched = job, None
            return job

    def resume_training(self, run_dir: str | Path, owner: str = "the app", on_message=None):
        """Continue a stopped, failed or killed run from its newest complete checkpoint."""
        run = RunFolder(run_dir)
        if not run.exists():
            raise UserError(f"Run folder {run.path} does not exist: pick a run from the list.")
        config = run.config()
        if config is None:
            raise UserError(f"{run.path} has no run.yaml, so it cannot be continued: start a new run instead.")
        if not run.resumable():
            state = run.state()
            why = {"finished": "it already finished", "training": "it is training now",
                   "empty": "it saved no complete checkpoint"}.get(state, f"it is {state}")
            raise UserError(f"Run {run.name} cannot be resumed: {why}. Start a new run instead.")
        config = config.replace(training={"output_dir": str(run.path)})
        return self.start_training(config, resume=True, owner=owner, on_message=on_message)

    def stop_training(self) -> str:
        job = self._job
        if job is None or not job.running:
            other = self.watched_run()
            if other is not None and other.live() is not None:
                from workbench.training.launch_plan import request_stop

                request_stop(other)
                return (f"Stop requested for run {other.name}, which trains in another process: it stops at the "
                        "end of its current step and saves a checkpoint.")
            if job is not None:
                return job.request_stop()  # "The run already ended (finished)." for a second press
            return "Nothing is running."
        return job.request_stop()

    def watch(self, run_dir: str | Path) -> str:
        """Show ``run_dir`` on the Training tab (a run launched by hand, e.g. on a cluster's shared disk)."""
        if not str(run_dir or "").strip():
            raise UserError("Give the run folder to watch (the folder holding run.yaml and metrics.jsonl).")
        folder = RunFolder(str(run_dir).strip())
        if not folder.exists() or not folder.is_run():
            raise UserError(f"{folder.path} is not a run folder (no run.yaml): give the folder a launch or a "
                            "training run writes into.")
        self._watched = folder
        return f"Watching {folder.path} ({folder.state()})."

    def watched_run(self) -> RunFolder | None:
        """The run the Training tab shows: this process's job, else one training elsewhere."""
        job = self._job
        if job is not None and job.running:
            return RunFolder(job.output_dir)
        if self._watched is not None:
            return self._watched
        other = self.training_elsewhere()
        if other is not None:
            return other
        return RunFolder(job.output_dir) if job is not None else None

    def snapshot(self) -> dict | None:
        """What the Training tab shows of the watched run: status, metric rows, log lines.

        The same for a job of this app and a run of another process (read from its folder)."""
        import time

        folder = self.watched_run()
        if folder is None:
            return None
        rows = self._tail(folder).rows()
        job = self._job
        if job is not None and RunFolder(job.output_dir) == folder:
            return {"status": job.status(), "rows": rows, "log": list(job.log_tail), "external": False,
                    "folder": folder}
        recorded, live = folder.status(), folder.live()
        last = next((r for r in reversed(rows) if r.get("kind", "train") == "train"), {})
        state = (recorded.get("state") or "training") if live else folder.state()
        ranks = {m.get("rank") for m in last.get("memory") or [] if isinstance(m, dict)} - {None}
        status = RunStatus.from_last_row(
            last, live is not None, state=state, message=recorded.get("message", ""), step=int(last.get("step") or 0),
            max_steps=int(recorded.get("max_steps") or 0), output_dir=str(folder.path), running=live is not None,
            elapsed_s=(time.time() - live.started) if live else 0.0, processes=max(len(ranks), 1),
            strategy=self._strategy(folder) if ranks else "").to_dict()
        return {"status": status, "rows": rows, "log": folder.events(), "external": True, "folder": folder}

    def _strategy(self, folder: RunFolder) -> str:
        """training.strategy from a run's run.yaml, read once per folder."""
        key = folder.path.resolve()
        if key not in self._strategies:
            try:
                config = folder.config()
                self._strategies[key] = config.training.strategy if config else ""
            except UserError:
                self._strategies[key] = ""
        return self._strategies[key]

    def _tail(self, folder: RunFolder) -> MetricsTail:
        key = folder.path.resolve()
        if key not in self._tails:
            if len(self._tails) > 8:
                self._tails.clear()
            self._tails[key] = MetricsTail(folder.metrics_file)
        return self._tails[key]

    # ---- inference ------------------------------------------------------------------
    @contextmanager
    def inference(self, base: str, adapter_dir: str, run_config=None):
        """The base model with ``adapter_dir`` attached, loaded once and kept until another pair,
        a training start or ``release_inference`` replaces it. Held for one answer at a time."""
        from workbench.inference import Comparer

        with self._inference_lock:
            reason = self.busy_reason()
            if reason:
                raise DevicesBusy(reason.replace("wait for it to finish",
                                                 "wait for it to finish before comparing answers"))
            key = (base, str(adapter_dir))
            if self._inference_key != key:
                self._drop_inference()
                self._inference = Comparer(base, adapter_dir, run_config)
                self._inference_key = key
            yield self._inference

    @property
    def inference_key(self) -> tuple | None:
        return self._inference_key

    def release_inference(self) -> None:
        with self._lock:
            self._release_inference()

    def _release_inference(self) -> None:
        with self._inference_lock:  # an answer in progress finishes first
            self._drop_inference()

    def _drop_inference(self) -> None:
        import gc

        self._inference = self._inference_key = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # ---- export -------------------------------------------------------------------
    @contextmanager
    def exporting(self):
        """One export at a time in this process; a second is refused with a sentence."""
        if not self._export_lock.acquire(blocking=False):
            raise UserError("An export is already running in this app: wait for it to finish.")
        try:
            yield
        finally:
            self._export_lock.release()

    # ---- runs -----------------------------------------------------------------------
    def runs(self, extra=()):
        """Every run the app knows: the runs folder, live runs, and those this session started or
        watched wherever they live (a run in its own output_dir stays listed after it ends)."""
        from workbench.runs import list_runs

        own = [str(self._job.output_dir)] if self._job is not None else []
        watched = [str(self._watched.path)] if self._watched is not None else []
        return list_runs(extra=[*extra, *own, *watched])
