"""The app as one session: a run survives edits and a second Start, other processes' runs are
seen and respected, runs say how they ended, resume from the UI, presets load from the cache."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from workbench.errors import UserError
from workbench.run_folder import RunFolder
from workbench.session import DevicesBusy, Workbench
from workbench.training import JobState
from waiting import wait_for


def steady(demo_config, out: Path, max_steps: int, save_steps: int = 0):
    """Demo settings with one row per step (fractions of a second each), logged every step."""
    return demo_config.replace(training={"max_steps": max_steps, "per_device_train_batch_size": 1,
                                         "gradient_accumulation_steps": 1, "logging_steps": 1,
                                         "save_steps": save_steps, "output_dir": str(out)})


def test_editing_settings_and_a_second_start_leave_the_run_training(demo_config, tmp_path):
    # Seen in a browser: editing the LoRA form (or Start in a second tab) during a run killed it
    # with "AcceleratorState object has no attribute num_processes".
    from workbench.ui import lora_tab, training_tab

    session = Workbench()
    config = steady(demo_config, tmp_path / "run", max_steps=30)
    job = session.start_training(config)
    wait_for(lambda: job.step >= 1 or not job.running)
    form = dict(zip(lora_tab.KEYS, lora_tab.form_values(config.to_dict())))
    while job.running and job.step < 25:
        for rank in (4, 8):
            form["lora.rank"], form["training.max_steps"] = rank, 10 * rank
            lora_tab.apply_form(config.to_dict(), *[form[k] for k in lora_tab.KEYS])
        second = training_tab.start(session, {**config.to_dict(), "training": {
            **config.to_dict()["training"], "output_dir": str(tmp_path / "second")}})
        assert second.startswith("**Not started:**") and "already running" in second
    assert job.wait(300) == JobState.FINISHED, job.message
    assert job.step == 30 and not (tmp_path / "second").exists()


def test_runs_say_how_they_ended(demo_config, tmp_path):
    from workbench.runs import run_info

    session = Workbench()
    job = session.start_training(steady(demo_config, tmp_path / "stopped", max_steps=300, save_steps=2))
    wait_for(lambda: job.step >= 3 or not job.running)
    job.request_stop()
    assert job.wait(120) == JobState.STOPPED
    stopped = run_info(job.output_dir)
    assert stopped.state == "stopped" and stopped.resumable and "Stopped at step" in stopped.message



def test_a_failed_start_leaves_no_run_folder_behind(demo_config, tmp_path):
    """Each failed Start used to leave a 'failed' folder in the run lists."""
    from workbench.paths import runs_root
    from workbench.ui.training_tab import tick

    session = Workbench()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(UserError, match="not JSON"):  # refused by the settings check: no job, no folder
        session.start_training(steady(demo_config, tmp_path / "failed", 4).replace(data={"train_path": str(bad)}))
    assert not (tmp_path / "failed").exists()

    rows = tmp_path / "rows.jsonl"  # JSON records, every one a problem row: the job itself refuses it
    rows.write_text('{"messages": []}\n' * 3)
    before = set(runs_root().iterdir())
    for out in (tmp_path / "failed", None, tmp_path / "mine"):
        if out == tmp_path / "mine":
            out.mkdir()  # a folder the user made stays, empty as it was
        config = steady(demo_config, out or "", 4).replace(data={"train_path": str(rows)})
        failed = session.start_training(config)
        assert failed.wait(120) == JobState.FAILED and "problem row" in failed.message, failed.message
        assert "problem row" in tick(session, {})[0]  # the Training tab still says why
    assert not (tmp_path / "failed").exists()
    assert set(runs_root().iterdir()) == before
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_resume_from_the_training_tab_continues_from_the_newest_checkpoint(demo_config, tmp_path):
    from workbench.ui import training_tab

    from workbench.paths import runs_root

    session = Workbench()
    job = session.start_training(steady(demo_config, runs_root() / "to-resume", max_steps=12, save_steps=2))
    wait_for(lambda: RunFolder(job.output_dir).newest_complete() is not None or not job.running)
    job.request_stop()
    job.wait(120)
    stopped_at = job.step
    assert str(job.output_dir) in [path for _, path in training_tab.resumable_runs(session)]
    # a resume stopped while it loads leaves the run where it was, and resumable
    from workbench.settings import RunConfig
    from workbench.training import TrainingJob

    def stop_while_loading(line):
        if "applying LoRA" in line:
            early.request_stop()

    early = TrainingJob(RunConfig.load(RunFolder(job.output_dir).config_file), resume=True,
                        on_message=stop_while_loading)
    assert early.run() == JobState.STOPPED and f"still at checkpoint-{stopped_at}" in early.message
    status = RunFolder(job.output_dir).status()
    assert (status["step"], status["max_steps"]) == (stopped_at, 12), status
    assert str(job.output_dir) in [path for _, path in training_tab.resumable_runs(session)]
    message = training_tab.resume(session, str(job.output_dir))
    assert message.startswith("Resuming"), message
    resumed = session.job
    assert resumed is not job and resumed.wait(300) == JobState.FINISHED, resumed.message
    assert resumed.step == 12 and any(f"Training from checkpoint-{stopped_at}" in line for line in resumed.log_tail)
    assert training_tab.resume(session, str(job.output_dir)).startswith("**Not resumed:**")  # finished now
    assert str(job.output_dir) not in [path for _, path in training_tab.resumable_runs(session)]
    assert "pick a run" in training_tab.resume(session, None)


def cli_train(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "workbench", "train", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_cli_run_in_another_process_is_watched_and_respected(demo_config, tmp_path):
    from workbench.ui import training_tab

    out = tmp_path / "cli-run"
    proc = cli_train("--output-dir", out, "--max-steps", 400)
    session = Workbench()
    try:
        wait_for(lambda: len(RunFolder(out).metrics()) >= 2 or proc.poll() is not None, timeout=240)
        assert proc.poll() is None, proc.communicate()
        holder = session.training_elsewhere()
        assert holder == RunFolder(out) and holder.live().owner == "the CLI"
        refused = training_tab.start(session, steady(demo_config, tmp_path / "mine", 2).to_dict())
        assert refused.startswith("**Not started:**") and str(out) in refused and "the CLI" in refused
        status, progress, loss, _, log, _, run_dir, *_ = training_tab.tick(session, {}, {})
        assert status.startswith("**training**") and "outside this app" in status
        assert len(loss) >= 2 and "[training]" in log and "step" in progress
        assert "another process" in session.stop_training()
        with pytest.raises(DevicesBusy):
            with session.inference("demo", str(out)):
                pass
    finally:
        proc.kill()
        proc.wait()
    # kill -9 leaves the lock file behind, but its process is gone: the devices are free again
    assert (out / ".live.json").exists() and RunFolder(out).live() is None
    assert session.training_elsewhere() is None and RunFolder(out).state() in ("interrupted", "empty")


def test_a_device_map_for_gpus_this_machine_lacks_is_refused_before_loading(demo_config, tmp_path):
    from workbench.training.checks import check_run_config

    planned = demo_config.replace(model={"device_map": {"model.visual": 0, "model.language_model": 1, "lm_head": 3}})
    with pytest.raises(UserError, match="GPU 0, but this machine has no GPU"):
        check_run_config(planned)
    started = time.monotonic()
    with pytest.raises(UserError, match="Memory planner"):
        Workbench().start_training(planned.replace(training={"output_dir": str(tmp_path / "run")}))
    assert time.monotonic() - started < 5 and not (tmp_path / "run").exists()


def fake_hub_cache(hf_home: Path, hub_id: str, model_folder: Path) -> Path:
    """The Hugging Face cache layout (refs/main -> snapshots/<commit>/) holding ``model_folder``'s files."""
    repo = hf_home / "hub" / ("models--" + hub_id.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_preset_in_the_hugging_face_cache_trains_by_its_name(demo, tmp_path):
    from workbench.models import locate_model

    snapshot = fake_hub_cache(tmp_path / "hf", "Qwen/Qwen2-VL-7B-Instruct", demo.model)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = cli_train("--model", "qwen2-vl-7b-instruct", "--dataset", demo.train, "--max-steps", 2,
                     "--output-dir", tmp_path / "run", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert RunFolder(tmp_path / "run").has_final_adapter() and "Finished 2 steps" in out
    os.environ["HF_HOME"], previous = str(tmp_path / "hf"), os.environ.get("HF_HOME")
    try:
        assert locate_model("qwen2-vl-7b-instruct").local_path == snapshot
    finally:
        os.environ.pop("HF_HOME") if previous is None else os.environ.__setitem__("HF_HOME", previous)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env", [
    {"HF_HUB_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:{port}"},  # online, but the hub does not answer
])
def test_a_preset_not_downloaded_answers_within_seconds_naming_the_hub_id(tmp_path, env, monkeypatch):
    from workbench.models import fetch_model

    env = {k: v.format(port=closed_port()) for k, v in env.items()}
    for key, value in {"HF_HOME": str(tmp_path / "hf"), **env}.items():
        monkeypatch.setenv(key, value)
    if "HF_ENDPOINT" in env:  # huggingface_hub reads its endpoint at import: point the running one there too
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", env["HF_ENDPOINT"])
    started = time.monotonic()
    with pytest.raises(UserError, match="Qwen/Qwen2-VL-7B-Instruct is not in the Hugging Face cache"):
        fetch_model("qwen2-vl-7b-instruct")
    assert time.monotonic() - started < 10  # the resolution itself: no retries, no long timeout
    (tmp_path / "x.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi?"}, '
                                      '{"role": "assistant", "content": "Hi."}]}\n')
    proc = cli_train("--model", "qwen2-vl-7b-instruct", "--dataset", tmp_path / "x.jsonl", "--max-steps", 1,
                     "--output-dir", tmp_path / "run", env={"HF_HOME": str(tmp_path / "hf"), **env})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "Qwen/Qwen2-VL-7B-Instruct" in err and "Traceback" not in err


def test_every_handler_answers_with_a_sentence():
    import gradio as gr

    from workbench.ui.app import answer_with_a_sentence

    def broken(x):
        raise KeyError("columns")

    with pytest.raises(gr.Error) as raised:
        answer_with_a_sentence(broken)(1)
    assert "KeyError" in raised.value.message and "workbench.log" in raised.value.message
    with pytest.raises(gr.Error, match="the fix"):
        answer_with_a_sentence(lambda: (_ for _ in ()).throw(UserError("the fix")))()


def test_the_app_wraps_every_handler(demo):
    from workbench.ui.app import build_app

    app = build_app()
    assert all(getattr(f.fn, "__wrapped__", None) is not None for f in app.fns.values() if f.fn is not None)


def test_live_lock_is_exclusive_and_released(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.acquire("the app"):
        assert folder.live() is not None and folder.state() == "training"
        with pytest.raises(UserError, match="being trained by the app"):
            folder.acquire("the CLI")
    assert folder.live() is None and not folder.lock_file.exists()
    stale = {"pid": 999999, "host": socket.gethostname(), "started": 0, "owner": "gone"}
    folder.lock_file.write_text(json.dumps(stale))  # a process that died without releasing
    with folder.acquire("the app"):
        assert folder.live().owner == "the app"


def test_an_inference_base_not_downloaded_answers_within_seconds(trained_run, monkeypatch):
    # Seen before: a preset typed as the Inference base hung 140 s and blocked every tab.
    from workbench.ui import inference_tab

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    answer = inference_tab.ask(Workbench(), "qwen2-vl-7b-instruct", str(trained_run.output_dir), None, "", "hi",
                               "", 4, 0, 1)
    assert time.monotonic() - started < 10
    assert "Qwen/Qwen2-VL-7B-Instruct is not in the Hugging Face cache" in answer[-1]


def test_an_image_spoilt_mid_run_fails_with_the_way_to_resume(demo, demo_config, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo.train.parent, data)
    session = Workbench()
    config = steady(demo_config, tmp_path / "run", max_steps=300, save_steps=2).replace(
        data={"train_path": str(data / "train.jsonl")})
    job = session.start_training(config)
    wait_for(lambda: RunFolder(job.output_dir).newest_complete() is not None or not job.running)
    for image in (data / "images").iterdir():
        image.write_bytes(b"not an image any more")
    assert job.wait(300) == JobState.FAILED
    assert "--resume" in job.message and "newest complete checkpoint is checkpoint-" in job.message, job.message
