"""The bridge between Trainer (in a background thread) and the app: metrics out, stop in."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from workbench.training.checkpoints import mark_complete


class MetricsBuffer:
    """Thread-safe append-only record of metric rows; readers take copies from an index on."""

    def __init__(self, path: Path | None = None):
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._path = path

    def append(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
            if self._path is not None:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

    def since(self, index: int = 0) -> list[dict]:
        with self._lock:
            return list(self._rows[index:])

    def __len__(self):
        with self._lock:
            return len(self._rows)

    def load(self, path: Path) -> None:
        """Reload an earlier run's rows (resume continues the curve)."""
        if path.is_file():
            with self._lock:
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        self._rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn last line from a kill


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf."""


def sample_memory() -> list[dict]:
    try:
        from workbench.hardware import sample_memory as sample
    except ImportError:
        return []
    return sample()


class WorkbenchCallback(TrainerCallback):
    """Per log step: metrics + memory into the buffer. Per step: honour a stop request."""

    def __init__(self, job):
        self.job = job
        self._start = None
        self._start_step = 0
        self._tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()
        self._start_step = state.global_step
        self._tokens_at_start = state.num_input_tokens_seen or 0
        self.job._set_progress(state.global_step, state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # the logged loss hides NaN (logging_nan_inf_filter); check the raw gradients
        if model is not None:
            for param in model.parameters():
                if param.grad is not None and not bool(param.grad.isfinite().all()):
                    raise NonFiniteError(f"gradient became NaN or infinite at step {state.global_step + 1}")

    def on_step_end(self, args, state, control, **kwargs):
        self.job._set_progress(state.global_step, state.max_steps)
        if self.job.stop_requested:
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            mark_complete(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        elapsed = max(time.monotonic() - (self._start or time.monotonic()), 1e-9)
        steps_done = state.global_step - self._start_step
        row = {"time": time.time(), "step": state.global_step, "epoch": state.epoch}
        for key in ("loss", "eval_loss", "grad_norm", "learning_rate"):
            if key in logs and isinstance(logs[key], (int, float)):
                row[key] = float(logs[key])
        if "grad_norm" in row and not math.isfinite(row["grad_norm"]):
            raise NonFiniteError(f"gradient norm became {row['grad_norm']} at step {state.global_step}")
        tokens = (state.num_input_tokens_seen or 0) - self._tokens_at_start
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        row["samples_per_s"] = steps_done * batch / elapsed
        row["tokens_per_s"] = tokens / elapsed if tokens else None
        remaining = max(state.max_steps - state.global_step, 0)
        row["eta_s"] = remaining * elapsed / steps_done if steps_done else None
        row["memory"] = sample_memory()
        self.job.metrics.append(row)
