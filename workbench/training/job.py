"""The training job: base + placement + LoRA + transformers.Trainer, in a background thread.

The job moves idle -> loading -> training -> saving -> finished | stopped | failed, each with
a sentence for people (details go to the log). Everything a watcher needs is written to the
run folder (``workbench.run_folder``): status, metrics, checkpoints, the adapter, the live
lock. Which job may run is the session's decision (``workbench.session``), not the job's.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from collections import deque
from contextlib import ExitStack
from enum import Enum
from pathlib import Path

from workbench.errors import UserError
from workbench.live_lock import LockLost, ensure_held
from workbench.run_folder import ADAPTER_FILES, RunFolder, RunStatus, checkpoint_step
from workbench.settings import RunConfig
from workbench.training.bridge import MetricsBuffer, WorkbenchCallback, best_of
from workbench.training.faults import failure_message
from workbench.training.loading import tiny_model_threads
from workbench.training.trainer import trainer_class  # a module name here: tests swap it for a recording one
# where a run writes: also imported from here by the launcher
from workbench.training.output import new_run_dir, prepare_output_dir, save_adapter_atomically  # noqa: F401

log = logging.getLogger("workbench.training")


class JobState(str, Enum):
    IDLE = "idle"
    LOADING = "loading"
    TRAINING = "training"
    SAVING = "saving"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


TERMINAL = {JobState.FINISHED, JobState.STOPPED, JobState.FAILED}


class TrainingJob:
    def __init__(self, config: RunConfig, resume: bool = False, on_message=None, owner: str = "the app",
                 placement=None, prepared: bool = False):
        """``placement``: where the model runs and who writes (``workbench.training.placement``);
        one process by default. ``prepared``: the folder was set up by a launcher (run.yaml and
        launch files, no run yet), so a new run may start in it."""
        from workbench.training.placement import SingleProcess

        self.resume = resume
        self.owner = owner  # who trains, as other processes see it in the live lock
        self.on_message = on_message  # called with each status line, in the job's thread
        self.placement = placement or SingleProcess()
        self.output_dir = prepare_output_dir(config, resume or prepared)
        self.folder = RunFolder(self.output_dir)
        # A new run failing before its first step leaves no folder behind (one per failed Start).
        self._discard_on_failure = not (resume or prepared)
        self._folder_existed = self.output_dir.exists()
        self._trained = False
        self.config = config.replace(training={"output_dir": str(self.output_dir)})
        self.state = JobState.IDLE
        self.message = "Not started."
        self.step, self.max_steps = 0, 0
        self.rows_per_item = 1.0  # rows in one item of a batch: more than 1 with data.packing
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.log_tail: deque[str] = deque(maxlen=200)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = None  # the run folder's live lock, held from start to end
        self.metrics: MetricsBuffer | None = None
        self.exit_code = 0  # for the CLI: 2 bad input, 1 any other failure
        self.error: BaseException | None = None  # what ended a failed run (a launch's rank reports it)
        self.answers = None  # the evaluation's held-out answers (workbench.training.evaluation.AnswerCheck)
        self.best: dict = {}  # {"best_checkpoint": name, "best_score": value} once Trainer has a best

    # ---- control ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Take the run folder's live lock now (so every watcher sees the run at once), then train
        in a background thread."""
        self._take_lock()
        self._thread = threading.Thread(target=self.run, name="workbench-training", daemon=True)
        self._thread.start()

    def _take_lock(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self.placement.take_lock(self.folder, self.owner)

    def should_stop(self) -> bool:
        """Stop now? (Every rank of a launch gets the same answer at the same step.)"""
        return self.placement.should_stop(self)

    def request_stop(self) -> str:
        if self.state in TERMINAL:
            return f"The run already ended ({self.state.value})."
        if self._stop.is_set():
            return "Stop already requested: the run stops at the end of the current step."
        self._stop.set()
        self._say(self.state, "Stop requested: saving the adapter at the end of the current step.")
        return self.message

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def status(self) -> dict:
        """A snapshot for the UI and the CLI (cheap: no copy of the metrics)."""
        end = self.ended_at or time.time()
        elapsed = end - self.started_at if self.started_at else 0.0
        last = self.metrics.last("train") if self.metrics else None
        return RunStatus.from_last_row(last, self.state == JobState.TRAINING, state=self.state.value,
                                       message=self.message, step=self.step, max_steps=self.max_steps,
                                       output_dir=str(self.output_dir), running=self.running,
                                       elapsed_s=elapsed).to_dict()

    # ---- internals ----------------------------------------------------------------
    def say(self, message: str) -> None:
        """A status line in the job's current state (the placements' stop sentences, from their callbacks)."""
        self._say(self.state, message)

    def _say(self, state: JobState, message: str) -> None:
        self.state, self.message = state, message
        self._trained = self._trained or state == JobState.TRAINING
        line = f"{time.strftime('%H:%M:%S')} [{state.value}] {message}"
        self.log_tail.append(line)
        log.info(line)
        if self.placement.is_main and self.folder.exists() and self._holds_folder():  # watchers read it too
            try:
                self.folder.write_status(state.value, message, self.step, self.max_steps, **self.best)
                self.folder.append_event(line)
            except OSError:
                log.warning("could not write the status of %s", self.folder.path, exc_info=True)
        if self.on_message is not None:
            self.on_message(line)

    def _holds_folder(self) -> bool:
        """False once another process took the run's live lock: from then on nothing is written there."""
        return self._lock is None or self._lock.holder() is None

    def _set_progress(self, step: int, max_steps: int) -> None:
        first = self.max_steps == 0 and max_steps > 0
        self.step, self.max_steps = step, max_steps
        if first and self.placement.is_main and self._holds_folder():  # watchers learn the length once
            self.folder.write_status(self.state.value, self.message, step, max_steps, **self.best)

    def run(self) -> JobState:
        """The whole run, in the calling thread. Never raises: the outcome is the state."""
        self.started_at = time.time()
        try:
            if self._lock is None:  # run() called directly, not through start()
                self._take_lock()
        except (UserError, OSError) as exc:
            self.ended_at, self.exit_code = time.time(), 2
            self.state, self.message = JobState.FAILED, str(exc)
            self.log_tail.append(str(exc))
            if self.on_message is not None:
                self.on_message(str(exc))
            return self.state
        model = trainer = None
        self._scoped = ExitStack()  # what the run changes in this process (thread count) and gives back
        try:
            model, trainer = self._train()
        except LockLost as exc:
            self.error = exc
            self._say(JobState.FAILED, str(exc))
        except UserError as exc:
            self.exit_code, self.error = 2, exc
            message = str(exc)
            if self.state == JobState.TRAINING:  # bad input met mid-run (an image): the run can continue
                last = self.folder.newest_complete()
                kept = f"the newest complete checkpoint is {last.name}" if last else "no complete checkpoint was saved yet"
                message += (f" ({kept}: fix it, then continue with `python -m workbench train --resume --output-dir "
                            f"{self.output_dir}` or Resume on the Training tab.)")
            self._say(JobState.FAILED, message)
        except Exception as exc:  # noqa: BLE001 - the job must end in a state, never crash the app
            self.error = exc
            self._say(JobState.FAILED, failure_message(exc, self.folder, log))
        finally:
            self.ended_at = time.time()
            if self.state == JobState.FAILED and not self.exit_code:
                self.exit_code = 1
            if self.state not in TERMINAL:  # a path above forgot to say how it ended
                self._say(JobState.FAILED, "The run ended without a result; details are in the log.")
            del trainer, model
            self._scoped.close()
            _release_memory()
            ours = self._holds_folder()  # a folder another process took over is never cleaned from here
            if self._lock is not None:
                self._lock.release()
            if self._discard_on_failure and self.state == JobState.FAILED and not self._trained and ours:
                self._discard_folder()
        return self.state

    def _discard_folder(self) -> None:
        """Remove what this failed start wrote (status, events, run.yaml); a folder the user made stays."""
        if not self.placement.is_main or self.folder.newest_complete() is not None:
            return
        log.info("removing what %s holds: the run failed before its first step", self.output_dir)
        for child in [self.output_dir] if not self._folder_existed else list(self.output_dir.iterdir()):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def _train(self):
        """Load, train, save. Returns (model, trainer) so ``run`` frees them in one place."""
        from transformers import set_seed
        from transformers.trainer_callback import PrinterCallback

        from workbench.training.lora import apply_lora
        from workbench.training.checks import training_arguments
        from workbench.training.evaluation import answer_check
        from workbench.training.parts import announce
        from workbench.training.inputs import build_datasets, collator_for, rows_per_step

        placement, writes = self.placement, self.placement.is_main
        if self.resume:  # a resumed run shows where it is while it loads, not step 0 of 0
            newest = self.folder.newest_complete()
            self.step = checkpoint_step(newest) or 0
            self.max_steps = int(self.folder.status().get("max_steps") or 0)
        self._say(JobState.LOADING, "Checking the settings and the dataset.")
        placement.check(self.config)
        model_path = self._fetch_model()
        skipped: list = []
        train_set, eval_set, processor = build_datasets(self.config, model_path, skipped)
        if self.config.data.skip_problem_rows:
            self._leave_out(skipped, train_set, eval_set)
        resume_from = None
        self.metrics = MetricsBuffer(self.folder if writes else None)
        if self.resume:
            from workbench.training.resume import usable_checkpoint

            if writes:
                self.folder.remove_incomplete()
            resume_from, notes = usable_checkpoint(self.folder, move_aside=writes)
            self.best = best_of(self.folder, resume_from)
            for note in notes:
                self._say(JobState.LOADING, note)
            if writes:
                kept = self.folder.truncate_metrics(checkpoint_step(resume_from) or 0)
                self.metrics = MetricsBuffer(self.folder, rows=kept)
        if writes:
            self.config.save(self.folder.config_file)

        start_step = checkpoint_step(resume_from) or 0
        if resume_from and 0 < self.config.training.max_steps <= start_step:
            self._finish_from_checkpoint(resume_from, processor)
            return None, None
        self._say(JobState.LOADING, f"Loading {self.config.model.name_or_path} and applying LoRA.")
        set_seed(self.config.training.seed)  # LoRA's initialisation too, not only the data order
        model = placement.load_model(model_path, self.config)
        self._scoped.enter_context(tiny_model_threads(model))
        model = apply_lora(model, self.config.lora, self.config.training.gradient_checkpointing)
        trainable, total = model.get_nb_trainable_parameters()
        part_rates, trains = announce(model, self.config, self.folder.config_file if writes else None)
        if self.should_stop():
            if resume_from:  # the run stays where it was: its step, its length, its checkpoints
                self.step = start_step
                self._say(JobState.STOPPED, f"Stopped before continuing; the run is still at {resume_from.name} "
                                            "and can be resumed again.")
            else:
                self._say(JobState.STOPPED, "Stopped before the first step; nothing was trained or saved.")
            return model, None
        # a resumed run measured its start already: its step-0 (and checkpoint-step) rows are kept
        args = training_arguments(placement.trainer_config(self.config), has_eval=eval_set is not None,
                                  **placement.trainer_overrides(), **({"eval_on_start": False} if resume_from else {}))
        placement.before_trainer(model)
        self.answers = answer_check(self.config, eval_set)
        trainer = placement.trainer_class(trainer_class())(
            model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
            data_collator=collator_for(train_set, processor, model),
            callbacks=placement.callbacks(self),
            loss_on_trained_tokens_only=self.config.training.loss_on_trained_tokens_only,
            part_rates=part_rates, answer_check=self.answers,
        )
        # with tqdm off Trainer prints every log dict to stdout; the bridge already reports them
        trainer.remove_callback(PrinterCallback)
        self.step = start_step
        where = f" from {resume_from.name}" if resume_from else ""
        left_out = sum(len(s.problems) for s in skipped)
        rows = f" ({len(train_set.samples):,} rows; {left_out:,} problem row(s) skipped)" if left_out else ""
        per_step = rows_per_step(train_set, args)
        self.rows_per_item = len(train_set.samples) / max(1, len(train_set))
        self._say(JobState.TRAINING, f"Training{where}{rows}: {trainable:,} of {total:,} parameters trainable ({trains}); "
                                     f"{per_step}.")
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

        if self._stop.is_set() and self.step == start_step:
            self._say(JobState.STOPPED, f"Stopped before the first step (at step {self.step}); nothing new was saved.")
            return model, trainer
        self._say(JobState.SAVING, "Saving the adapter.")
        ensure_held(self.folder.path)
        placement.save_adapter(model, trainer, self.folder)
        if writes:
            processor.save_pretrained(self.folder.processor_dir)
        if self._stop.is_set():
            self._say(JobState.STOPPED, f"Stopped at step {self.step}; adapter saved in {self.output_dir}. "
                                        "Resume it from the Training tab or with --resume.")
        else:  # the rows left out stay said at the end: a fast run replaces the line that said them
            self._say(JobState.FINISHED, f"Finished {self.step} steps{rows}; adapter saved in {self.output_dir}.")
        return model, trainer

    def _leave_out(self, skipped: list, train_set, eval_set) -> None:
        """data.skip_problem_rows: the rows left out are said before anything loads, listed in the run
        folder, and the same on every rank (each rank checked the files itself)."""
        from workbench.training.inputs import row_fingerprint

        if not self.placement.same_on_every_rank(row_fingerprint(train_set, eval_set)):
            raise UserError("The processes of this launch disagree on which rows have problems (a dataset file "
                            "or image that differs, or cannot be read, on some nodes): make the data the same on "
                            "every node, then start again.")
        if self.placement.is_main:  # a resume after the data was fixed leaves no stale list behind
            self.folder.write_skipped_rows([record for s in skipped for record in s.records()])
        if not skipped:
            return
        self._say(JobState.LOADING, "Training on the valid rows only: " + "; ".join(s.sentence() for s in skipped)
                  + f". Every skipped row is listed in {self.folder.skipped_rows_file.name}.")

    def _fetch_model(self) -> str:
        """The base model's local folder, downloading it (with progress in the status) when needed."""
        from workbench.models import fetch_model, locate_model

        source = locate_model(self.config.model.name_or_path)
        if source.local_path is not None:
            return str(source.local_path)
        self._say(JobState.LOADING, f"Downloading {source.hub_id} from the Hugging Face hub.")
        shown = {"at": 0.0}

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - shown["at"] >= 2 or done >= total:  # a line every 2 s, not per chunk
                shown["at"] = now
                self._say(JobState.LOADING, f"Downloading {source.hub_id}: {done / 1e9:.2f} of {total / 1e9:.2f} GB.")

        return str(fetch_model(self.config.model.name_or_path, progress=progress))

    def _finish_from_checkpoint(self, checkpoint: Path, processor) -> None:
        """Resume of a run that already reached max_steps (killed while saving the adapter):
        Trainer would train one more step, so the checkpoint's adapter becomes the run's."""
        self._say(JobState.SAVING, f"{checkpoint.name} already reached max_steps: saving its adapter.")
        if self.placement.is_main:
            ensure_held(self.folder.path)
            staging = self.folder.staging_dir
            staging.mkdir(exist_ok=True)
            for name in ADAPTER_FILES:
                shutil.copyfile(checkpoint / name, staging / name)
            self.folder.publish_adapter(staging)
            processor.save_pretrained(self.folder.processor_dir)
        self.step = self.max_steps = checkpoint_step(checkpoint)
        self._say(JobState.FINISHED, f"Finished {self.step} steps; adapter saved in {self.output_dir}.")


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
