"""Two processes on this CPU machine (gloo): DDP and FSDP2 through accelerate launch, two "nodes"
on 127.0.0.1, Stop and kill -9 of a rank with resume. Each test starts real launches.

Equality with one process: with the planned batch split over the ranks (accumulation or
per-process batch divided by the world size) every optimizer step sees the same rows as the
one-process run, so the adapters agree to float rounding; the held-out answers must then agree
too (tolerance: one row in 40 may flip on a near-tie, accuracy within 0.05).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from workbench.run_folder import RunFolder
from workbench.settings import RunConfig
from workbench.training.launch_plan import free_port
from waiting import wait_for

WEIGHT_TOLERANCE = 1e-4  # largest |difference| of any adapter weight (the weights themselves are ~0.1)
ACCURACY_TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def bounded_collectives(monkeypatch):
    # a regression that hangs a collective fails this test in 2 minutes, not the default 30
    monkeypatch.setenv("WORKBENCH_COLLECTIVE_TIMEOUT_S", "120")


@pytest.fixture
def reaper():
    """Processes of runs this test started: ended by pid if the test fails half-way."""
    folders = []
    yield folders.append
    for folder in folders:
        for pid, _ in rank_processes(folder):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def rank_processes(folder) -> list[tuple[int, int]]:
    """(pid, rank) of the worker processes training ``folder`` on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"workbench.training.worker" in argv and str(folder).encode() in argv:
            rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), -1)
            found.append((int(entry.name), rank))
    return found


def cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def rows(out) -> list[dict]:
    return RunFolder(out).metrics()


def assert_same_adapter(a: Path, b: Path) -> float:
    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert set(first) == set(second)
    worst = max(float((first[k] - second[k]).abs().max()) for k in first)
    assert worst < WEIGHT_TOLERANCE, worst
    return worst


def assert_same_heldout_answers(demo, demo_config, single: Path, launched: Path) -> None:
    """Held-out accuracy of the launched run's adapter (loaded in plain PEFT) against one process."""
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.inference import Comparer, heldout_check, heldout_samples

    base = Qwen2VLForConditionalGeneration.from_pretrained(demo.model)
    assert any("lora_A" in n for n, _ in PeftModel.from_pretrained(base, str(launched)).named_parameters())
    samples = heldout_samples(demo.heldout, limit=40)
    one = heldout_check(Comparer("demo", single, demo_config), samples)
    many = heldout_check(Comparer("demo", launched, demo_config), samples)
    same = sum(a["adapter"] == b["adapter"] for a, b in zip(one["rows"], many["rows"]))
    assert same >= len(samples) - 1, (one["rows"][:3], many["rows"][:3])
    assert abs(one["adapter_accuracy"] - many["adapter_accuracy"]) <= ACCURACY_TOLERANCE


def assert_one_row_per_step_from_every_rank(out, max_steps: int, world: int = 2) -> None:
    train = [r for r in rows(out) if r.get("kind") == "train"]
    assert [r["step"] for r in train] == list(range(1, max_steps + 1))  # rank 0 alone writes, once per step
    for row in train:
        assert sorted(m["rank"] for m in row["memory"]) == list(range(world))
        assert all(m["used_bytes"] > 0 for m in row["memory"])


# ---------------------------------------------------------------------------------- DDP, like the app
def test_ddp_from_the_training_tab_matches_one_process(trained_run, demo, demo_config, tmp_path, reaper):
    from workbench.session import DevicesBusy, Workbench
    from workbench.ui import training_tab

    out = tmp_path / "ddp"
    reaper(out)
    config = demo_config.replace(training={"max_steps": 40, "save_steps": 20, "logging_steps": 1,
                                           "strategy": "ddp", "nproc_per_node": 2, "output_dir": str(out)})
    session = Workbench()
    started = training_tab.start(session, config.to_dict())
    assert started.startswith("Started 2 processes (DDP, accelerate launch)"), started
    assert "4 rows x 1 accumulation x 2 processes = 8 rows per step, the planned 8 x 1" in started
    job = session.job
    with pytest.raises(DevicesBusy, match="already running"):
        session.start_training(demo_config.replace(training={"output_dir": str(tmp_path / "b")}))
    wait_for(lambda: len(rows(out)) >= 2 or not job.running)
    with pytest.raises(DevicesBusy, match="is training in the app"):  # another process sees rank 0's lock
        Workbench().start_training(demo_config.replace(training={"output_dir": str(tmp_path / "c")}))
    live = RunFolder(out).live()
    assert live is not None and live.pid != os.getpid() and "rank 0 of 2 processes" in live.owner
    view = {}
    status, progress, loss, memory, log, view, run_dir, *_ = training_tab.tick(session, view, config.to_dict())
    assert "2 processes, DDP" in status
    job.wait(300)
    assert job.state.value == "finished", job.message
    status, progress, loss, memory, log, view, run_dir, *_ = training_tab.tick(session, view, config.to_dict())
    assert {"rank 0 cpu resident", "rank 1 cpu resident"} <= set(memory["value"]["series"])  # with its headroom (y_lim)
    assert "[finished]" in log and run_dir == str(out)
    assert not rank_processes(out) and RunFolder(out).live() is None
    assert_one_row_per_step_from_every_rank(out, 40)
    assert all(sorted(p.name for p in (out / f"checkpoint-{n}").glob("rng_state_*")) ==
               ["rng_state_0.pth", "rng_state_1.pth"] for n in (20, 40))
    assert_same_adapter(trained_run.output_dir, out)
    assert_same_heldout_answers(demo, demo_config, trained_run.output_dir, out)


# ---------------------------------------------------------------------------------- FSDP2, from the CLI
def test_fsdp_from_the_cli_stopped_and_resumed_matches_one_process(trained_run, demo, demo_config, tmp_path, reaper):
    out = tmp_path / "fsdp"
    reaper(out)
    folder = RunFolder(out)
    config_file = demo_config.replace(training={"max_steps": 40, "save_steps": 4}).save(tmp_path / "run.yaml")
    proc = cli("train", config_file, "--strategy", "fsdp", "--nproc", 2, "--output-dir", out)
    wait_for(lambda: folder.newest_complete() is not None, proc=proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: every rank stops at the same step, with a checkpoint
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Starting 2 processes (FSDP) with accelerate launch" in stderr and "Stopped at step" in stdout
    stopped_at = int(stdout.split("Stopped at step ")[1].split(";")[0])
    checkpoint = out / f"checkpoint-{stopped_at}"
    assert (checkpoint / "COMPLETE").is_file() and stopped_at < 40
    # the checkpoint holds the LoRA weights gathered whole, not the frozen base (FULL_STATE_DICT would)
    assert (checkpoint / "pytorch_model_fsdp.bin").stat().st_size < 2 * (checkpoint / "adapter_model.safetensors").stat().st_size
    proc = cli("train", "--resume", "--output-dir", out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"Training from checkpoint-{stopped_at}" in stderr and "Finished 40 steps" in stdout
    assert RunConfig.load(out / "run.yaml").training.strategy == "fsdp"
    steps = [r["step"] for r in rows(out) if r.get("kind") == "train"]
    assert steps == sorted(set(steps)) and set(range(5, 41, 5)) <= set(steps) <= set(range(5, 41, 5)) | {stopped_at}
    # stopped, resumed, and still the same adapter as one process trained straight through
    assert_same_adapter(trained_run.output_dir, out)
    assert_same_heldout_answers(demo, demo_config, trained_run.output_dir, out)


def test_fsdp_with_text_only_and_image_rows_in_the_same_step_does_not_hang(demo, demo_config, tmp_path, reaper):
    """Every step, one rank gets the text-only row and the other the image row (with activation
    checkpointing on, which replays every layer in backward)."""
    from workbench.training import JobState, TrainingJob

    data = tmp_path / "mixed.jsonl"
    image = str(demo.data / json.loads(demo.train.read_text().splitlines()[0])["images"][0])
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>What color is the shape?"},
                                             {"role": "assistant", "content": "red"}], "images": [image]}) + "\n" +
                    json.dumps({"messages": [{"role": "user", "content": "Say hello."},
                                             {"role": "assistant", "content": "hello"}], "images": []}) + "\n")
    config = demo_config.replace(data={"train_path": str(data)},
                                 training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
                                           "max_steps": 6, "save_steps": 3, "logging_steps": 1,
                                           "gradient_checkpointing": True})
    single = TrainingJob(config.replace(training={"output_dir": str(tmp_path / "one")}))
    assert single.run() == JobState.FINISHED, single.message
    out = tmp_path / "fsdp-mixed"
    reaper(out)
    proc = cli("train", config.save(tmp_path / "mixed.yaml"), "--strategy", "fsdp", "--nproc", 2, "--output-dir", out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert_one_row_per_step_from_every_rank(out, 6)
    assert_same_adapter(tmp_path / "one", out)  # the dummy image adds exactly nothing


# ---------------------------------------------------------------------------------- two nodes on loopback
def test_two_node_scripts_side_by_side_train_a_loadable_adapter_watched_and_stopped_from_the_app(
        demo, demo_config, tmp_path, reaper):
    """The files `launch` writes for two nodes, started by hand (as on a cluster), watched by the
    app through the run folder and stopped from it."""
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.session import Workbench
    from workbench.ui import training_tab

    out = tmp_path / "two-nodes"
    reaper(out)
    config_file = demo_config.replace(training={"logging_steps": 1}).save(tmp_path / "run.yaml")
    wrote = cli("launch", config_file, "--strategy", "fsdp", "--nodes", 2, "--nproc-per-node", 1, "--main-ip",
                "127.0.0.1", "--main-port", free_port(), "--max-steps", 300, "--out", out)
    assert wrote.wait(120) == 0, wrote.stderr.read()
    nodes = [subprocess.Popen(["bash", str(out / "launch" / f"node-{n}.sh")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHON": sys.executable})
             for n in (0, 1)]
    session = Workbench()
    assert training_tab.watch(session, str(out)).startswith("Watching")
    wait_for(lambda: len(rows(out)) >= 3)
    status, *_ = training_tab.tick(session, {})
    assert status.startswith("**training** (2 processes, FSDP)") and "Started outside this app" in status
    assert "Stop requested for run two-nodes" in training_tab.stop(session)
    assert [node.wait(300) for node in nodes] == [0, 0]
    folder = RunFolder(out)
    assert folder.state() == "stopped" and folder.has_final_adapter() and folder.live() is None
    assert (out / "launch" / "node-1.log").stat().st_size > 0
    train = [r for r in rows(out) if r.get("kind") == "train"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1)) and len(train) < 300
    assert all(sorted(m["rank"] for m in r["memory"]) == [0, 1] for r in train)
    base = Qwen2VLForConditionalGeneration.from_pretrained(demo.model)
    model = PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())


# ---------------------------------------------------------------------------------- Stop, kill -9, resume
def test_ctrl_c_stops_every_rank_then_a_killed_rank_ends_the_run_then_resume_finishes(demo_config, tmp_path, reaper):
    out = tmp_path / "faults"
    reaper(out)
    config_file = demo_config.replace(training={"max_steps": 60, "save_steps": 3, "logging_steps": 1,
                                                "per_device_train_batch_size": 2, "strategy": "ddp",
                                                "nproc_per_node": 2}).save(tmp_path / "run.yaml")
    folder = RunFolder(out)
    # 1. Ctrl-C: every rank stops at the same step boundary, with a complete checkpoint there
    proc = cli("train", config_file, "--output-dir", out)
    wait_for(lambda: folder.newest_complete() is not None, proc=proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Stopped at step" in stdout and folder.state() == "stopped"
    stopped_at = int(stdout.split("Stopped at step ")[1].split(";")[0])
    assert (out / f"checkpoint-{stopped_at}" / "COMPLETE").is_file() and stopped_at < 60
    assert sorted(p.name for p in (out / f"checkpoint-{stopped_at}").glob("rng_state_*")) == \
        ["rng_state_0.pth", "rng_state_1.pth"]
    assert not rank_processes(out) and not (out / ".stop-request").exists()

    # 2. kill -9 of rank 1 mid-run: every rank ends, and the sentence names the rank and the checkpoint
    proc = cli("train", "--resume", "--output-dir", out)
    wait_for(lambda: any(r["step"] >= stopped_at + 4 for r in rows(out)), proc=proc)
    victim = next(pid for pid, rank in rank_processes(out) if rank == 1)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    stdout, stderr = proc.communicate(timeout=300)
    ended_in = time.monotonic() - killed_at
    newest = folder.newest_complete()
    assert proc.returncode == 1
    assert f"Rank 1 was killed (SIGKILL); every rank stopped, the newest complete checkpoint is {newest.name}" in stderr
    assert "--resume" in stderr and "Traceback" not in stderr.split("error:")[-1]
    assert folder.status()["state"] == "failed" and folder.state() == "failed"
    assert ended_in < 90, ended_in  # torchrun tears the group down; nothing waits for a collective timeout
    assert not rank_processes(out)

    # 3. --resume finishes it from the newest complete checkpoint; no step is logged twice
    proc = cli("train", "--resume", "--output-dir", out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"Training from {newest.name}" in stderr and "Finished 60 steps" in stdout
    assert [r["step"] for r in rows(out) if r.get("kind") == "train"] == list(range(1, 61))
    assert folder.has_final_adapter() and folder.state() == "finished"
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows(out)])).all()


# ---------------------------------------------------------------------------------- QLoRA under DDP
def test_ddp_on_a_4bit_base_trains_a_plain_adapter_on_every_rank(demo, demo_config, tmp_path, reaper):
    """Each rank quantises its own copy of the base (nf4) and trains; the adapter is a plain one."""
    out = tmp_path / "qlora-ddp"
    config = demo_config.replace(model={"quantization": "nf4"}, training={
        "strategy": "ddp", "nproc_per_node": 2, "max_steps": 4, "save_steps": 0, "logging_steps": 1,
        "output_dir": str(out)})
    config.save(tmp_path / "qlora.yaml")
    reaper(out)
    before = nf4_loads()
    proc = cli("train", tmp_path / "qlora.yaml")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert_one_row_per_step_from_every_rank(out, 4)
    assert nf4_loads() - before == 2  # both ranks loaded the base in 4 bits
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())


def nf4_loads() -> int:
    from workbench.paths import log_file

    path = log_file()
    return path.read_text().count("quantization=nf4") if path.exists() else 0
