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
from workbench.run_folder import RunFolder, checkpoint_name

# Throughput and ETA come from the last few log rows, not the average since the start:
# warm-up, data skipping on resume and the first eval would otherwise skew them for long.
RATE_WINDOW = 20
ANSWER_CHARS = 200  # of each held-out answer kept in an eval row


class MetricsBuffer:
    """Thread-safe append-only record of metric rows; readers take copies from an index on."""

    def __init__(self, folder: RunFolder | None = None, rows: list[dict] | None = None):
        self._rows: list[dict] = list(rows or [])
        self._lock = threading.Lock()
        self._folder = folder  # the run folder's metrics.jsonl gets every row (rank 0 only: None elsewhere)

    def append(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
            if self._folder is not None:
                self._folder.append_metrics(row)

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


def best_of(folder: RunFolder, checkpoint: Path | None) -> dict:
    """{"best_checkpoint", "best_score"} as Trainer recorded them in ``checkpoint`` (a resume starts from
    it and Trainer restores the same record), or {} when there is none or it is gone."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")) if checkpoint else {}
    except (OSError, ValueError):
        return {}
    best = state.get("best_model_checkpoint")
    if not best or not (folder.path / Path(best).name).is_dir():
        return {}
    return {"best_checkpoint": Path(best).name, "best_score": state.get("best_metric")}


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

    def on_evaluate(self, args, state, control, **kwargs):
        # a stop asked for while the held-out rows were answered saves this step, not one more
        if state.global_step > 0 and self.job.should_stop():
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / checkpoint_name(state.global_step)
        if path.is_dir():
            ensure_held(args.output_dir)
            folder = RunFolder(args.output_dir)
            folder.mark_complete(path)
            best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
            # Trainer's own rule (rotate_checkpoints): the newest and the best survive the limit
            folder.keep_newest_complete(self.job.config.training.save_total_limit, best=best)
            if best is not None and best.is_dir():
                job = self.job
                job.best = {"best_checkpoint": best.name, "best_score": state.best_metric}
                folder.write_status(job.state.value, job.message, job.step, job.max_steps, **job.best)

    def on_log(self, args, state, control, logs=None, **kwargs):
        row = self.row(args, state, dict(logs or {}))
        if row is not None:
            ensure_held(args.output_dir)
            self.job.metrics.append(row)
            if row["kind"] == "eval":  # said in the status and the log, as the CLI and the tab show them
                score = f", {row['eval_metric']} {row['eval_score']:.3f}" if "eval_metric" in row else ""
                self.job.say(f"Evaluated at step {row['step']}: eval loss {row['eval_loss']:.4f}{score}.")

    def row(self, args, state, logs: dict) -> dict | None:
        """One metrics row from Trainer's logs: kind 'train' (loss) or 'eval' (eval_loss)."""
        if "loss" in logs:
            kind = "train"
        elif "eval_loss" in logs:
            kind = "eval"
        else:
            return None  # Trainer's end-of-run summary: the rows already hold it
        row = {"kind": kind, "time": time.time(), "step": state.global_step, "epoch": state.epoch}
        for key in ("loss", "eval_loss", "eval_score", "eval_iou", "grad_norm", "learning_rate"):
            if isinstance(logs.get(key), (int, float)):
                row[key] = float(logs[key])
        if "eval_score" in row and self.job.answers is not None:
            row["eval_metric"] = self.job.answers.metric
            # what the model answered: a score alone does not say how an answer is wrong
            row["eval_answers"] = [{"row": r["row"], "answer": r["answer"][:ANSWER_CHARS], "score": r["score"]}
                                   for r in self.job.answers.last]
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
