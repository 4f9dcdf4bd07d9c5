"""Faults during training: kill -9 at any moment, an image that vanishes, a full disk.

The kill trials run the real ``python -m workbench train`` in a subprocess and continue it
with ``train --resume --output-dir``. Two kills land inside a checkpoint write on purpose
(a hook in the subprocess sends itself SIGKILL there: after the adapter weights, before the
optimizer state; and after every file, before the COMPLETE marker); the others land at
random moments from outside. ``benchmarks/reliability.py`` runs many more random trials
with the same helpers.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from run_helpers import MARKER, checkpoints, is_complete, newest_complete, start_job
from workbench.training import JobState, TrainingJob

ROOT = Path(__file__).resolve().parents[1]

# Runs `python -m workbench ARGS`; with $WB_KILL_AT=mid-write:N or before-marker:N the process
# SIGKILLs itself inside the write of checkpoint-N (the disk state a kill there leaves).
KILL_HOOK = """
import os, runpy, signal, sys
where, _, step = os.environ.get("WB_KILL_AT", "").partition(":")
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if where == "mid-write":
    from transformers import Trainer
    real_save = Trainer._save_optimizer_and_scheduler
    def save(self, output_dir):
        if self.state.global_step == int(step):
            die()
        return real_save(self, output_dir)
    Trainer._save_optimizer_and_scheduler = save
elif where == "before-marker":
    from workbench.run_folder import RunFolder
    real_mark = RunFolder.mark_complete
    def mark(path):
        if os.path.basename(str(path)) == "checkpoint-" + step:
            die()
        return real_mark(path)
    RunFolder.mark_complete = staticmethod(mark)
sys.argv = ["python -m workbench", *sys.argv[1:]]
runpy.run_module("workbench", run_name="__main__", alter_sys=True)
"""


def fast_config(demo_config, out: Path, max_steps: int = 12, save_steps: int = 2):
    """Demo settings with one small row per step, so a step takes a fraction of a second."""
    return demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                         "logging_steps": 1, "warmup_ratio": 0.0, "save_steps": save_steps,
                                         "max_steps": max_steps, "output_dir": str(out)})


def train_process(args: list, log: Path, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WB_KILL_AT": kill_at,
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", KILL_HOOK, "train", *map(str, args)], cwd=ROOT, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def resume_args(out: Path) -> list:
    return ["--resume", "--output-dir", out]


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if row.get("kind") == "train":
            steps.append(row["step"])
    return steps


def wait_until(predicate, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def kill(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait()


def disk_state(out: Path) -> dict:
    """Complete and incomplete checkpoints after a kill."""
    found = checkpoints(out)
    return {"complete": [n for n, p in found if is_complete(p)], "incomplete": [n for n, p in found if not is_complete(p)]}


def resumed_from(log_text: str) -> int | None:
    """The checkpoint a resumed run says it started from (None: from scratch)."""
    import re

    match = re.search(r"Training from checkpoint-(\d+)|checkpoint-(\d+) already reached max_steps", log_text)
    return int(match.group(1) or match.group(2)) if match else None


def random_kill(args: list, out: Path, log: Path, rng: random.Random, max_steps: int,
                latest: int | None = None) -> dict:
    """Start a train process and SIGKILL it at a random moment: while loading, or inside a random step.

    ``latest`` is the last step after which the kill may come (default max_steps - 2, so the
    process is still running; max_steps lets it land in the final adapter save, or miss).
    """
    latest = max_steps - 2 if latest is None else latest
    steps = lambda: max(logged_steps(out) or [0])  # noqa: E731
    before = steps()
    proc = train_process(args, log)
    if rng.random() < 0.25 or before + 2 > latest:  # during start-up / model loading
        time.sleep(rng.uniform(0.0, 3.0))
    else:
        target = rng.randint(before + 2, latest)
        wait_until(lambda: steps() >= target - 1, proc)
        started = time.monotonic()
        wait_until(lambda: steps() >= target, proc)
        step_seconds = time.monotonic() - started
        time.sleep(rng.uniform(0.0, 1.5 * step_seconds))  # inside the next step, or its checkpoint write
    code = kill(proc)
    return {"returncode": code, **disk_state(out)}


def load_in_plain_peft(base: Path, adapter: Path):
    """The adapter through peft's public API only (no workbench code), on the base it was trained on."""
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(base, use_safetensors=True)
    return PeftModel.from_pretrained(model, adapter)


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


# ---------------------------------------------------------------------------- kill -9 and resume
def test_kill_nine_anywhere_then_resume_loses_nothing(demo, demo_config, tmp_path):
    import torch

    max_steps, rng = 12, random.Random(int(os.environ.get("WB_FAULT_SEED", "7")))
    out = tmp_path / "run"
    config_path = fast_config(demo_config, out, max_steps).save(tmp_path / "run.yaml")

    # 1. killed inside the write of checkpoint-4: weights written, optimizer state not
    p1 = train_process([config_path], tmp_path / "p1.log", kill_at="mid-write:4")
    assert p1.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "p1.log").read_text()[-2000:]
    assert disk_state(out) == {"complete": [2], "incomplete": [4]}

    # 2. resumed from checkpoint-2 (the half-written 4 is ignored), then killed after every file of
    #    checkpoint-6 but before its marker
    p2 = train_process(resume_args(out), tmp_path / "p2.log", kill_at="before-marker:6")
    assert p2.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "p2.log").read_text()[-2000:]
    assert resumed_from((tmp_path / "p2.log").read_text()) == 2
    assert disk_state(out) == {"complete": [2, 4], "incomplete": [6]}

    # 3. two kills at random moments from outside, each followed by a resume
    expected_start = 4
    for trial in range(2):
        log = tmp_path / f"random{trial}.log"
        state = random_kill(resume_args(out), out, log, rng, max_steps)
        assert state["returncode"] == -signal.SIGKILL
        assert resumed_from(log.read_text()) in (expected_start, None)  # None: killed while loading
        if state["complete"]:
            expected_start = state["complete"][-1]

    # 4. the last resume runs to the end from the newest complete checkpoint
    last = subprocess.run([sys.executable, "-m", "workbench", "train", *map(str, resume_args(out))], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert last.returncode == 0, last.stderr[-2000:]
    assert "Traceback" not in last.stderr
    assert resumed_from(last.stderr) == expected_start
    steps = logged_steps(out)
    assert steps == list(range(1, max_steps + 1)), steps  # one curve: no gap, no repeat across five processes
    state = json.loads((out / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps

    # nothing lost: the same weights as one uninterrupted run with the same settings (training.seed)
    reference = TrainingJob(fast_config(demo_config, tmp_path / "reference", max_steps))
    torch.manual_seed(12345)  # whatever the global RNG holds, training.seed decides the LoRA init
    assert reference.run() == JobState.FINISHED, reference.message
    got, want = adapter_tensors(out), adapter_tensors(reference.output_dir)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)

    model = load_in_plain_peft(demo.model, out)
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert loaded and any(float(p.abs().sum()) > 0 for p in loaded.values())  # trained, not a fresh init


# ---------------------------------------------------------------------------- faults inside the job
def small_dataset(demo, folder: Path, rows: int = 16) -> Path:
    """The first rows of the demo data with their own copies of the images (so the test can delete them)."""
    (folder / "images").mkdir(parents=True)
    lines = demo.train.read_text().splitlines()[:rows]
    for line in lines:
        image = json.loads(line)["images"][0]
        shutil.copy(demo.data / image, folder / image)
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_image_that_disappears_mid_run_ends_with_a_message(demo, demo_config, tmp_path):
    data = small_dataset(demo, tmp_path / "data")
    config = fast_config(demo_config, tmp_path / "run", max_steps=40).replace(data={"train_path": str(data)})
    job = start_job(config)
    wait_until(lambda: (tmp_path / "run" / "checkpoint-2" / MARKER).is_file() or not job.running)
    for image in (tmp_path / "data" / "images").iterdir():
        image.unlink()
    assert job.wait(300) == JobState.FAILED, job.message
    assert "images/train_" in job.message and "\n" not in job.message
    complete = [n for n, p in checkpoints(job.output_dir) if is_complete(p)]
    assert complete and 2 in complete
    assert (job.output_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()

    again = start_job(fast_config(demo_config, tmp_path / "next", max_steps=1))
    assert again.wait(300) == JobState.FINISHED, again.message


def test_a_vanished_image_message_names_the_fix(demo, demo_config, tmp_path):
    data = small_dataset(demo, tmp_path / "data", rows=4)
    config = fast_config(demo_config, tmp_path / "run", max_steps=20).replace(data={"train_path": str(data)})
    job = start_job(config)
    wait_until(lambda: job.step >= 1 or not job.running)
    for image in (tmp_path / "data" / "images").iterdir():
        image.unlink()
    assert job.wait(300) == JobState.FAILED
    assert "resume" in job.message.lower() and "Details are in the log" not in job.message, job.message


class DiskFull:
    """torch.save (optimizer, scheduler, rng state) fails with ENOSPC from checkpoint ``from_step`` on."""

    def __init__(self, monkeypatch, from_step: int):
        import torch
        from transformers import Trainer

        self.from_step, self.hits = from_step, 0
        real_save, real_checkpoint = torch.save, Trainer._save_checkpoint
        outer = self

        def save(obj, f, *args, **kwargs):
            if outer.writing >= outer.from_step:
                outer.hits += 1
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            return real_save(obj, f, *args, **kwargs)

        def checkpoint(trainer, model, trial=None):
            outer.writing = trainer.state.global_step
            return real_checkpoint(trainer, model, trial)

        self.writing = 0
        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(Trainer, "_save_checkpoint", checkpoint)


def test_disk_full_while_saving_keeps_earlier_checkpoints(demo_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    full = DiskFull(monkeypatch, from_step=4)
    job = start_job(fast_config(demo_config, out, max_steps=8))
    assert job.wait(300) == JobState.FAILED, job.message
    assert full.hits >= 1
    assert "disk" in job.message and "full" in job.message and "checkpoint-2" in job.message
    assert "\n" not in job.message
    assert disk_state(out) == {"complete": [2], "incomplete": [4]}
    # checkpoint-2 is whole: its adapter loads and its state says step 2
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert adapter_tensors(out / "checkpoint-2")
    monkeypatch.undo()

    # space is back: the run resumes from checkpoint-2 and a new job starts as well
    resumed = start_job(fast_config(demo_config, out, max_steps=8), resume=True)
    assert resumed.wait(300) == JobState.FINISHED, resumed.message
    assert any("from checkpoint-2" in line for line in resumed.log_tail)
    assert logged_steps(out) == list(range(1, 9))
    fresh = start_job(fast_config(demo_config, tmp_path / "fresh", max_steps=1))
    assert fresh.wait(300) == JobState.FINISHED, fresh.message


def test_disk_full_message_names_the_fix(demo_config, tmp_path, monkeypatch):
    DiskFull(monkeypatch, from_step=2)
    job = start_job(fast_config(demo_config, tmp_path / "run", max_steps=4))
    assert job.wait(300) == JobState.FAILED
    assert "resume" in job.message.lower() and "Details are in the log" not in job.message, job.message


def test_a_failed_checkpoint_write_never_leaves_no_complete_checkpoint(demo_config, tmp_path, monkeypatch):
    from workbench.run_folder import RunFolder

    out = tmp_path / "run"
    real_mark = RunFolder.mark_complete

    def mark(path):  # the disk fills up just as the marker of checkpoint-4 is written
        if Path(path).name == "checkpoint-4":
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / MARKER))
        return real_mark(path)

    monkeypatch.setattr(RunFolder, "mark_complete", staticmethod(mark))
    config = fast_config(demo_config, out, max_steps=6).replace(training={"save_total_limit": 1})
    job = start_job(config)
    assert job.wait(300) == JobState.FAILED
    assert newest_complete(out) is not None, disk_state(out)


def test_the_same_seed_gives_the_same_adapter(demo_config, tmp_path):
    import torch

    adapters = []
    for name in ("a", "b"):
        torch.manual_seed(len(adapters))  # whatever ran before in this process
        job = TrainingJob(fast_config(demo_config, tmp_path / name, max_steps=2, save_steps=0))
        assert job.run() == JobState.FINISHED, job.message
        adapters.append(adapter_tensors(job.output_dir))
    for name, tensor in adapters[0].items():
        assert torch.equal(tensor, adapters[1][name]), name


def test_resuming_a_run_that_reached_max_steps_trains_nothing_more(demo_config, tmp_path):
    out = tmp_path / "run"
    config = fast_config(demo_config, out, max_steps=2, save_steps=2)
    assert TrainingJob(config).run() == JobState.FINISHED
    (out / "adapter_model.safetensors").unlink()  # as if killed while the final adapter was written
    again = TrainingJob(config, resume=True)
    assert again.run() == JobState.FINISHED, again.message
    assert again.step == 2 and logged_steps(out) == [1, 2], (again.step, logged_steps(out))
