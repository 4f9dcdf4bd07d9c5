"""The training job: base + device_map + LoRA + transformers.Trainer, in a background thread.

One job per process (accelerate's state is process-global): ``start_job`` refuses a
second while one runs. The job moves idle -> loading -> training -> saving ->
finished | stopped | failed, each with a sentence for people; details go to the log.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from enum import Enum
from pathlib import Path

from workbench.errors import UserError
from workbench.paths import runs_root
from workbench.settings import RunConfig
from workbench.training.bridge import MetricsBuffer, NonFiniteError, WorkbenchCallback
from workbench.training.checkpoints import newest_complete, remove_incomplete

log = logging.getLogger("workbench.training")
RUN_CONFIG_NAME = "run.yaml"


class JobState(str, Enum):
    IDLE = "idle"
    LOADING = "loading"
    TRAINING = "training"
    SAVING = "saving"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


TERMINAL = {JobState.FINISHED, JobState.STOPPED, JobState.FAILED}
_registry_lock = threading.Lock()
_current: "TrainingJob | None" = None


class JobBusy(UserError):
    pass


def current_job() -> "TrainingJob | None":
    return _current


def start_job(config: RunConfig, resume: bool = False) -> "TrainingJob":
    """Create and start a job in a background thread; refuse while another one runs."""
    global _current
    with _registry_lock:
        if _current is not None and _current.running:
            raise JobBusy(f"A training job is already running ({_current.output_dir}, {_current.state.value}, "
                          f"step {_current.step}/{_current.max_steps}): stop it or wait for it to finish.")
        job = TrainingJob(config, resume=resume)
        job.start()
        _current = job
        return job


def new_run_dir(config: RunConfig) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.model.name_or_path).name or "model")[:40]
    base = runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def prepare_output_dir(config: RunConfig, resume: bool) -> Path:
    """A new run gets a new folder; an existing run is only ever continued (--resume)."""
    if not config.training.output_dir:
        if resume:
            raise UserError("--resume needs --output-dir: the run folder to continue.")
        return new_run_dir(config)
    path = Path(config.training.output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"training.output_dir {path} is a file: choose a folder for the run.")
    if resume:
        if not path.is_dir():
            raise UserError(f"Cannot resume: {path} does not exist. Check --output-dir.")
        return path
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"training.output_dir {path} already holds files: continue that run with --resume, "
                        "or choose a new output directory (nothing was overwritten).")
    return path


def trainer_class():
    import torch
    from transformers import Trainer

    class WorkbenchTrainer(Trainer):
        """Trainer that stops on a non-finite raw loss (the logged loss filters NaN away)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not bool(torch.isfinite(loss).all()):
                raise NonFiniteError(f"loss became {float(loss.detach().float().mean())} at step {self.state.global_step + 1}")
            return loss

    return WorkbenchTrainer


class TrainingJob:
    def __init__(self, config: RunConfig, resume: bool = False, on_message=None):
        self.resume = resume
        self.on_message = on_message  # called with each status line, in the job's thread
        self.output_dir = prepare_output_dir(config, resume)
        self.config = config.replace(training={"output_dir": str(self.output_dir)})
        self.state = JobState.IDLE
        self.message = "Not started."
        self.step, self.max_steps = 0, 0
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.log_tail: deque[str] = deque(maxlen=200)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics: MetricsBuffer | None = None
        self.exit_code = 0  # for the CLI: 2 bad input, 1 any other failure

    # ---- control ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="workbench-training", daemon=True)
        self._thread.start()

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
        eta = last.get("eta_s") if last and self.state == JobState.TRAINING else None
        return {"state": self.state.value, "message": self.message, "step": self.step,
                "max_steps": self.max_steps, "elapsed_s": elapsed, "eta_s": eta,
                "loss": last.get("loss") if last else None, "output_dir": str(self.output_dir),
                "running": self.running}

    # ---- internals ----------------------------------------------------------------
    def _say(self, state: JobState, message: str) -> None:
        self.state, self.message = state, message
        line = f"{time.strftime('%H:%M:%S')} [{state.value}] {message}"
        self.log_tail.append(line)
        log.info(line)
        if self.on_message is not None:
            self.on_message(line)

    def _set_progress(self, step: int, max_steps: int) -> None:
        self.step, self.max_steps = step, max_steps

    def run(self) -> JobState:
        """The whole run, in the calling thread. Never raises: the outcome is the state."""
        self.started_at = time.time()
        model = trainer = None
        try:
            self._say(JobState.LOADING, "Checking the dataset.")
            from workbench.training.setup import build_datasets, build_trainer_args

            self.output_dir.mkdir(parents=True, exist_ok=True)
            train_set, eval_set, processor, model_path = build_datasets(self.config)
            resume_from = None
            self.metrics = MetricsBuffer(self.output_dir / "metrics.jsonl")
            if self.resume:
                remove_incomplete(self.output_dir)
                resume_from = newest_complete(self.output_dir)
                self._reload_metrics(resume_from)
            self.config.save(self.output_dir / RUN_CONFIG_NAME)

            self._say(JobState.LOADING, f"Loading {self.config.model.name_or_path} and applying LoRA.")
            from workbench.data.collate import Collator
            from workbench.training.loading import load_model
            from workbench.training.lora import apply_lora

            from transformers import set_seed

            set_seed(self.config.training.seed)  # LoRA's initialisation too, not only the data order
            start_step = int(resume_from.name.split("-")[1]) if resume_from else 0
            if resume_from and 0 < self.config.training.max_steps <= start_step:
                return self._finish_from_checkpoint(resume_from, processor)
            model = load_model(model_path, self.config)
            model = apply_lora(model, self.config.lora, self.config.training.gradient_checkpointing)
            trainable, total = model.get_nb_trainable_parameters()
            if self._stop.is_set():
                self._say(JobState.STOPPED, "Stopped before the first step; nothing was trained or saved.")
                return self.state
            trainer = trainer_class()(
                model=model, args=build_trainer_args(self.config, has_eval=eval_set is not None),
                train_dataset=train_set, eval_dataset=eval_set,
                data_collator=Collator(processor.tokenizer.pad_token_id),
                callbacks=[WorkbenchCallback(self)],
            )
            # with tqdm off Trainer prints every log dict to stdout; the bridge already reports them
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
            self.step = start_step
            where = f" from {resume_from.name}" if resume_from else ""
            self._say(JobState.TRAINING, f"Training{where}: {trainable:,} of {total:,} parameters trainable.")
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

            if self._stop.is_set() and self.step == start_step:
                self._say(JobState.STOPPED, f"Stopped before the first step (at step {self.step}); nothing new was saved.")
                return self.state
            self._say(JobState.SAVING, "Saving the adapter.")
            save_adapter_atomically(model, self.output_dir)
            processor.save_pretrained(self.output_dir / "processor")
            if self._stop.is_set():
                self._say(JobState.STOPPED, f"Stopped at step {self.step}; adapter saved in {self.output_dir}.")
            else:
                self._say(JobState.FINISHED, f"Finished {self.step} steps; adapter saved in {self.output_dir}.")
        except UserError as exc:
            self.exit_code = 2
            self._say(JobState.FAILED, str(exc))
        except NonFiniteError as exc:
            last = newest_complete(self.output_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
            self._say(JobState.FAILED, f"Training stopped: {exc}; {kept}. Lower the learning rate or check the data.")
        except Exception as exc:  # noqa: BLE001 - the job must end in a state, never crash the app
            fault = _fault_message(exc, self.output_dir)
            if fault:
                log.warning("training failed: %r", exc)
                self._say(JobState.FAILED, fault)
            elif _is_out_of_memory(exc):
                self._say(JobState.FAILED, _oom_message(exc))
            else:
                log.exception("training failed")
                self._say(JobState.FAILED, f"Training failed: {type(exc).__name__}: {str(exc)[:300]}. Details are in the log.")
        finally:
            self.ended_at = time.time()
            if self.state == JobState.FAILED and not self.exit_code:
                self.exit_code = 1
            del trainer, model
            _release_memory()
        return self.state

    def _finish_from_checkpoint(self, checkpoint: Path, processor) -> JobState:
        """Resume of a run that already reached max_steps (killed while saving the adapter):
        Trainer would train one more step, so the checkpoint's adapter becomes the run's."""
        self._say(JobState.SAVING, f"{checkpoint.name} already reached max_steps: saving its adapter.")
        staging = self.output_dir / ".adapter-saving"
        staging.mkdir(exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copyfile(checkpoint / name, staging / name)
        _publish(staging, self.output_dir)
        processor.save_pretrained(self.output_dir / "processor")
        self.step = self.max_steps = int(checkpoint.name.split("-")[1])
        self._say(JobState.FINISHED, f"Finished {self.step} steps; adapter saved in {self.output_dir}.")
        return self.state

    def _reload_metrics(self, checkpoint: Path | None) -> None:
        """Keep the curve up to the checkpoint we resume from; later rows will be logged again."""
        path = self.output_dir / "metrics.jsonl"
        old = MetricsBuffer()
        old.load(path)
        keep_until = int(checkpoint.name.split("-")[1]) if checkpoint else 0
        rows = [r for r in old.since(0) if r.get("step", 0) <= keep_until]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.metrics = MetricsBuffer(path)
        self.metrics.load(path)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # weights last: they mark "done"


def save_adapter_atomically(model, output_dir: Path) -> None:
    """Write the adapter beside the run, then move it in: a kill mid-write never leaves a
    damaged adapter_model.safetensors that looks finished."""
    staging = output_dir / ".adapter-saving"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    _publish(staging, output_dir)


def _publish(staging: Path, output_dir: Path) -> None:
    for name in ADAPTER_FILES:
        os.replace(staging / name, output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


def _fault_message(exc: BaseException, output_dir: Path) -> str | None:
    """One sentence with the fix for faults of the machine rather than the code."""
    import errno
    import pickle

    last = newest_complete(output_dir)
    kept = f"the newest complete checkpoint is {last.name}" if last else "no complete checkpoint was saved yet"
    resume = f"`python -m workbench train --resume --output-dir {output_dir}`"
    if isinstance(exc, pickle.UnpicklingError):
        where = f"in {last}" if last else "of this run"
        return (f"A checkpoint file {where} holds more than plain tensors and was not loaded "
                f"({_first_line(exc)[:160]}). Delete that checkpoint folder; resume then takes the one before it.")
    if isinstance(exc, FileNotFoundError):
        return (f"A file disappeared during training ({exc.filename or _first_line(exc)}); {kept}. "
                f"Put it back, then continue with {resume}.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"The disk holding {output_dir} is full; {kept}. Free some space, then continue with {resume}.")
    return None


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _oom_message(exc: BaseException) -> str:
    import torch

    match = re.search(r"GPU (\d+)", str(exc))
    device = f"cuda:{match.group(1)}" if match else "a device"
    peak = ""
    if match and torch.cuda.is_available():
        peak = f" (peak reserved {torch.cuda.max_memory_reserved(int(match.group(1))) / 2**30:.1f} GiB)"
    return (f"Out of memory on {device}{peak}. Open the Memory planner with these settings and apply its "
            "suggestion: lower max_pixels or max_length, turn on gradient checkpointing, or use more GPUs.")


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
