"""The bridge between Trainer (in a background thread) and the app: metrics out, stop in."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from pathlib import Path

from transformers import TrainerCallback

from workbench.live_lock import ensure_held
from workbench.run_folder import RunFolder

# Throughput and ETA come from the last few log rows, not the average since the start:
# warm-up, data skipping on resume and the first eval would otherwise skew them for long.
RATE_WINDOW = 20


class MetricsBuffer:
    """Thread-safe append-only record of metric rows; readers take copies from an index on."""

    def __init__(self, path: Path | None = None, rows: list[dict] | None = None):
        self._rows: list[dict] = list(rows or [])
        self._lock = threading.Lock()
        self._path = path

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            self._rows.append(row)
            if self._path is not None:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(line)

    def since(self, index: int = 0) -> list[dict]:
        with self._lock:
            return list(self._rows[index:])

    def last(self, kind: str | None = None) -> dict | None:
        """The newest row (of ``kind`` when given), without copying the whole list."""
        with self._lock:
            for row in reversed(self._rows):
                if kind is None or row.get("kind") == kind:
                    return row
        return None

    def __len__(self):
        with self._lock:
            return len(self._rows)


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf."""


def grads_finite(params) -> bool:
    """True when every gradient is finite: one fused norm over all of them (torch's own
    ``get_total_norm``, which groups by device), one sync, instead of a check per tensor."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


class WorkbenchCallback(TrainerCallback):
    """Per log step: metrics + memory into the buffer. Per step: honour a stop request."""

    def __init__(self, job):
        self.job = job
        self._trainable: list | None = None  # the LoRA parameters, found once
        self._marks: deque = deque(maxlen=RATE_WINDOW)  # (monotonic time, step, tokens seen)

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():  # peaks are per run, not since an earlier job in this process
            for device in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(device)
        self._marks.clear()
        self._marks.append((time.monotonic(), state.global_step, state.num_input_tokens_seen or 0))
        self.job._set_progress(state.global_step, state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # The logged loss and grad_norm arrive only every logging_steps and the logged loss
        # filters NaN away: check the raw gradients before the optimizer uses them.
        if model is not None and self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        if self._trainable and not grads_finite(self._trainable):
            raise NonFiniteError(f"gradient became NaN or infinite at step {state.global_step + 1}")

    def on_step_end(self, args, state, control, **kwargs):
        ensure_held(args.output_dir)  # a paused process whose run was taken over stops here
        self.job._set_progress(state.global_step, state.max_steps)
        if self.job.should_stop():
            # a checkpoint at the stop step keeps the run resumable from exactly here
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            ensure_held(args.output_dir)
            folder = RunFolder(args.output_dir)
            folder.mark_complete(path)
            folder.keep_newest_complete(self.job.config.training.save_total_limit)

    def on_log(self, args, state, control, logs=None, **kwargs):
        row = self.row(args, state, dict(logs or {}))
        if row is not None:
            ensure_held(args.output_dir)
            self.job.metrics.append(row)

    def row(self, args, state, logs: dict) -> dict | None:
        """One metrics row from Trainer's logs: kind 'train' (loss) or 'eval' (eval_loss)."""
        if "loss" in logs:
            kind = "train"
        elif "eval_loss" in logs:
            kind = "eval"
        else:
            return None  # Trainer's end-of-run summary: the rows already hold it
        row = {"kind": kind, "time": time.time(), "step": state.global_step, "epoch": state.epoch}
        for key in ("loss", "eval_loss", "grad_norm", "learning_rate"):
            if isinstance(logs.get(key), (int, float)):
                row[key] = float(logs[key])
        if not math.isfinite(row.get("grad_norm", 0.0)):
            raise NonFiniteError(f"gradient norm became {row['grad_norm']} at step {state.global_step}")
        if kind == "train":
            row.update(self._rates(args, state))
        row["memory"] = self.memory()
        return row

    def memory(self) -> list[dict]:
        """This process's memory sample (a launch's ranks gather theirs: ``placement.RankCallback``)."""
        from workbench.hardware import sample_memory

        return sample_memory()

    def _rates(self, args, state) -> dict:
        now, tokens = time.monotonic(), state.num_input_tokens_seen or 0
        then, step0, tokens0 = self._marks[0]
        self._marks.append((now, state.global_step, tokens))
        elapsed, steps = max(now - then, 1e-9), state.global_step - step0
        if steps <= 0:
            return {"samples_per_s": None, "tokens_per_s": None, "eta_s": None}
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        batch *= getattr(self.job, "rows_per_item", 1.0)  # packed: a batch item holds several rows
        remaining = max(state.max_steps - state.global_step, 0)
        return {"samples_per_s": steps * batch / elapsed,
                "tokens_per_s": (tokens - tokens0) / elapsed if tokens > tokens0 else None,
                "eta_s": remaining * elapsed / steps}
