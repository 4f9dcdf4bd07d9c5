"""The job's edges: stop, stop before the first step, NaN, OOM, incomplete checkpoints, kill + resume."""

import json

import pytest
import torch

from run_helpers import MARKER, checkpoints, current_job, is_complete, start_job
from workbench.training import JobState, TrainingJob
from waiting import wait_for


@pytest.fixture(scope="module")
def fast(demo_config):
    """Demo settings with one small row per step, so each step takes a fraction of a second."""
    return demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                         "logging_steps": 1, "warmup_ratio": 0.0, "save_steps": 2})


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_stop_mid_run_saves_adapter_and_a_resumable_checkpoint(fast, tmp_path):
    job = start_job(fast.replace(training={"max_steps": 500, "output_dir": str(tmp_path / "run")}))
    wait_for(lambda: job.step >= 3 or not job.running)
    job.request_stop()
    assert job.wait(120) == JobState.STOPPED, job.message
    assert f"Stopped at step {job.step}" in job.message and 3 <= job.step < 500
    assert (job.output_dir / "adapter_model.safetensors").is_file()
    stop_checkpoint = job.output_dir / f"checkpoint-{job.step}"
    assert is_complete(stop_checkpoint)  # resume continues from exactly where Stop was pressed
    assert current_job() is job and not job.running


def test_stop_before_the_first_step_trains_nothing(fast, tmp_path):
    job = TrainingJob(fast.replace(training={"max_steps": 50, "output_dir": str(tmp_path / "run")}))
    job.request_stop()
    assert job.run() == JobState.STOPPED
    assert "before the first step" in job.message
    assert not (job.output_dir / "adapter_model.safetensors").exists()
    assert checkpoints(job.output_dir) == []


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(fast, tmp_path, monkeypatch):
    from workbench.training import job as job_module

    real = job_module.trainer_class

    def poisoned():
        class Poisoned(real()):
            def compute_loss(self, model, inputs, *args, **kwargs):
                loss = super().compute_loss(model, inputs, *args, **kwargs)
                return loss * float("nan") if self.state.global_step >= 3 else loss

        return Poisoned

    monkeypatch.setattr(job_module, "trainer_class", poisoned)
    job = TrainingJob(fast.replace(training={"max_steps": 8, "output_dir": str(tmp_path / "run")}))
    assert job.run() == JobState.FAILED
    assert "loss became nan at step 4" in job.message and "checkpoint-2" in job.message, job.message
    assert [n for n, p in checkpoints(job.output_dir) if is_complete(p)] == [2]


def test_nan_gradient_with_finite_loss_is_caught(fast, tmp_path, monkeypatch):
    from workbench.training import lora as lora_module

    real = lora_module.apply_lora

    def poisoned(model, *args, **kwargs):
        model = real(model, *args, **kwargs)
        param = next(p for n, p in model.named_parameters() if "lora_B" in n)
        param.register_hook(lambda grad: grad * float("nan"))
        return model

    monkeypatch.setattr(lora_module, "apply_lora", poisoned)
    job = TrainingJob(fast.replace(training={"max_steps": 4, "output_dir": str(tmp_path / "run")}))
    assert job.run() == JobState.FAILED
    assert "gradient became NaN or infinite at step 1" in job.message, job.message


def test_out_of_memory_fails_the_job_and_leaves_the_app_usable(fast, tmp_path, monkeypatch):
    from workbench.training import job as job_module

    real = job_module.trainer_class

    def exhausted():
        class Exhausted(real()):
            def training_step(self, *args, **kwargs):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a "
                                             "total capacity of 39.39 GiB of which 1.2 GiB is free.")

        return Exhausted

    monkeypatch.setattr(job_module, "trainer_class", exhausted)
    job = start_job(fast.replace(training={"max_steps": 4, "output_dir": str(tmp_path / "oom")}))
    assert job.wait(120) == JobState.FAILED
    assert "Out of memory on cuda:1" in job.message and "planner" in job.message
    monkeypatch.setattr(job_module, "trainer_class", real)
    again = start_job(fast.replace(training={"max_steps": 1, "output_dir": str(tmp_path / "next")}))
    assert again.wait(120) == JobState.FINISHED, again.message


def test_incomplete_checkpoint_is_not_resumed_and_eval_rows_are_logged(fast, tmp_path):
    out = tmp_path / "run"
    config = fast.replace(training={"max_steps": 4, "eval_steps": 2, "output_dir": str(out)},
                          data={"eval_split": 0.01})
    assert TrainingJob(config).run() == JobState.FINISHED
    evals = [r for r in rows(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(r["eval_loss"] > 0 for r in evals)  # 0: the base
    (out / "checkpoint-4" / MARKER).unlink()  # as if killed while checkpoint-4 was being written
    resumed = TrainingJob(config.replace(training={"max_steps": 6}), resume=True)
    assert resumed.run() == JobState.FINISHED, resumed.message
    assert any("from checkpoint-2" in line for line in resumed.log_tail)
    train_steps = [r["step"] for r in rows(out) if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # rows after checkpoint-2 replaced, not duplicated
    assert is_complete(out / "checkpoint-4") and is_complete(out / "checkpoint-6")


