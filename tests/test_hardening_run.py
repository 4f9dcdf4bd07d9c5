"""Issue 27, the run half: hostile or careless input never runs a command, loses a run, or crashes."""

import os
import subprocess
import sys

import pytest


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m workbench ...`` in this process: (exit code, stdout, stderr)."""
    from workbench.cli.main import main

    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. the node scripts of `launch` --------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1$(touch {x})", "node0;touch {x}", "`touch {x}`", "a b", "-node",
                                     "10.0.0.1\ntouch {x}", ""])
def test_launch_refuses_a_main_ip_that_is_not_an_address(demo, tmp_path, capsys, address):
    marker = tmp_path / "INJECTED"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                          f"--main-ip={address.format(x=marker)}", "--out", tmp_path / "run")
    assert code == 2 and "--main-ip" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "run").exists() and not marker.exists()


def test_launch_accepts_addresses_and_host_names(demo, tmp_path, capsys):
    for n, address in enumerate(["10.1.2.3", "fe80::1", "node0", "node-0.cluster.example."]):
        code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                              "--main-ip", address, "--out", tmp_path / f"run{n}")
        assert code == 0, (address, stderr)


def test_launch_refuses_an_out_folder_with_a_newline(demo, tmp_path, capsys):
    out = tmp_path / "run\ntouch INJECTED"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 1, "--nproc-per-node", 1, "--out", out)
    assert code == 2 and "--out" in stderr and "control character" in stderr and not out.exists()


def test_node_scripts_never_run_what_a_hostile_out_folder_holds(demo, tmp_path, capsys):
    """The whole script run by bash, with a stub for python: the folder reaches the worker intact
    and the $(...), backtick and quotes in it never run."""
    marker = tmp_path / "INJECTED"
    out = tmp_path / f"run $(touch {marker}) `touch {marker}` it's \"q\" ${{HOME}}"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                          "--main-ip", "127.0.0.1", "--out", out)
    assert code == 0, stderr
    stub = tmp_path / "python-stub"
    argv_file = tmp_path / "argv.txt"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {argv_file}\n')
    stub.chmod(0o755)
    for node in (0, 1):
        script = out / "launch" / f"node-{node}.sh"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        done = subprocess.run(["bash", str(script), "--resume"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHON": str(stub)})
        assert done.returncode == 0, done.stderr
        assert f"Output: {out}/launch/node-{node}.log" in done.stdout
        argv = argv_file.read_text().splitlines()
        assert argv[argv.index("workbench.training.worker") + 1] == str(out) and argv[-1] == "--resume"
        assert argv[argv.index("--machine_rank") + 1] == str(node)
        # every comment line is still one comment line
        for line in script.read_text().splitlines()[1:7]:
            assert line.startswith("# ") or line.startswith("set "), line
    assert not marker.exists()


# ---- 2. resume and fresh runs never touch a folder another tool wrote -------------------
def foreign_folder(root):
    """What a plain Trainer run leaves: checkpoints without COMPLETE markers, metrics, notes."""
    root.mkdir()
    for step in (500, 1000):
        (root / f"checkpoint-{step}").mkdir()
        (root / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights %d" % step)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (root / "metrics.jsonl").write_text('{"step": 1000, "loss": 0.5}\n')
    (root / "notes.txt").write_text("my notes\n")
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_resume_refuses_a_folder_another_tool_wrote_and_touches_nothing(demo, tmp_path, capsys):
    out = tmp_path / "theirs"
    before = foreign_folder(out)
    code, _, stderr = cli(capsys, "train", "--resume", "--output-dir", out, "--max-steps", 2)
    assert code == 2 and "Cannot resume" in stderr and str(out) in stderr and "new --output-dir" in stderr, stderr
    assert files_of(out) == before


def test_a_fresh_run_refuses_a_folder_holding_files_and_touches_nothing(demo, tmp_path, capsys):
    out = tmp_path / "theirs"
    before = foreign_folder(out)
    code, _, stderr = cli(capsys, "train", "--output-dir", out, "--max-steps", 2)
    assert code == 2 and str(out) in stderr and "already holds files" in stderr, stderr
    assert files_of(out) == before


def test_cleanup_removes_only_half_written_checkpoints_the_workbench_began(tmp_path):
    from workbench.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    folder.mark_complete(tmp_path / "checkpoint-2")
    folder.note_checkpoint_started(2)
    folder.note_checkpoint_started(4)  # ours, killed mid-write; 6 was copied in by hand
    assert folder.remove_incomplete() == [tmp_path / "checkpoint-4"]
    assert sorted(p.name for _, p in folder.checkpoints()) == ["checkpoint-2", "checkpoint-6"]
    assert folder.newest_complete() == tmp_path / "checkpoint-2" and folder.started_here()
    assert not RunFolder(tmp_path / "checkpoint-6").started_here()


@pytest.fixture(scope="module")
def fast(demo_config):
    """Demo settings with one small row per step, so each step takes a fraction of a second."""
    return demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                         "logging_steps": 1, "warmup_ratio": 0.0, "save_steps": 2})


def test_a_run_records_each_checkpoint_before_writing_it_and_resume_clears_only_those(fast, tmp_path):
    from workbench.run_folder import COMPLETE, RunFolder
    from workbench.training import JobState, TrainingJob

    out = tmp_path / "run"
    config = fast.replace(training={"max_steps": 4, "output_dir": str(out)})
    assert TrainingJob(config).run() == JobState.FINISHED
    folder = RunFolder(out)
    assert folder.started_checkpoints() == {2, 4} == {n for n, _ in folder.checkpoints()}
    (out / "checkpoint-4" / COMPLETE).unlink()  # as if killed while writing it
    (out / "checkpoint-9").mkdir()  # someone's own folder, never written by this run
    (out / "checkpoint-9" / "mine.txt").write_text("keep me")
    resumed = TrainingJob(config.replace(training={"max_steps": 6}), resume=True)
    assert resumed.run() == JobState.FINISHED, resumed.message
    assert any("from checkpoint-2" in line for line in resumed.log_tail)
    assert (out / "checkpoint-9" / "mine.txt").read_text() == "keep me"


# ---- 5. a paused run keeps its lock; a run whose lock was taken stops writing ------------
def lock_body(pid, host, proc_start, owner="the CLI"):
    import json

    return json.dumps({"pid": pid, "host": host, "started": 0, "owner": owner, "proc_start": proc_start,
                       "token": "theirs"})


def test_a_lock_is_held_while_its_process_lives_whatever_its_heartbeat(tmp_path):
    import socket

    from workbench.errors import UserError
    from workbench.live_lock import process_start
    from workbench.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        old = 1_000_000_000  # a heartbeat from 2001: paused for years
        folder.lock_file.write_text(lock_body(sleeper.pid, socket.gethostname(), process_start(sleeper.pid)))
        os.utime(folder.lock_file, (old, old))
        assert folder.live() is not None and folder.live().pid == sleeper.pid and folder.state() == "training"
        with pytest.raises(UserError, match=f"pid {sleeper.pid}"):
            folder.acquire("the app")
        # the same pid started at another time is a reused pid: the lock's process is gone
        folder.lock_file.write_text(lock_body(sleeper.pid, socket.gethostname(), process_start(sleeper.pid) - 3600))
        os.utime(folder.lock_file, (old, old))
        assert folder.live() is None
        # another host's lock cannot be asked about: its heartbeat decides
        folder.lock_file.write_text(lock_body(sleeper.pid, "another-host", 0.0))
        assert folder.live() is not None
        os.utime(folder.lock_file, (old, old))
        assert folder.live() is None
        with folder.acquire("the app"):
            assert folder.live().owner == "the app"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_whose_lock_is_taken_between_steps_stops_writing(fast, tmp_path, monkeypatch):
    """In-process and deterministic: another host takes the lock right after step 2 is logged."""
    import json

    from workbench.training import JobState, TrainingJob
    from workbench.training.bridge import WorkbenchCallback

    out = tmp_path / "run"
    seen = {}
    real_step_end = WorkbenchCallback.on_step_end

    def step_end(self, args, state, control, **kwargs):
        if state.global_step == 3 and not seen:
            (out / ".live.json").write_text(lock_body(4242, "another-host", 0.0, owner="a resume elsewhere"))
            seen.update({n: (out / n).read_bytes() for n in ("metrics.jsonl", "status.json", "events.log")})
        return real_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(WorkbenchCallback, "on_step_end", step_end)
    job = TrainingJob(fast.replace(training={"max_steps": 8, "save_steps": 2, "output_dir": str(out)}))
    assert job.run() == JobState.FAILED and job.exit_code == 1
    assert "no longer this process's" in job.message and "a resume elsewhere (pid 4242 on another-host)" in job.message
    assert {n: (out / n).read_bytes() for n in seen} == seen
    assert [json.loads(r)["step"] for r in seen["metrics.jsonl"].decode().splitlines()] == [1, 2]
    assert [n for n, _ in job.folder.checkpoints()] == [2] and not job.folder.has_final_adapter()
    assert json.loads((out / ".live.json").read_text())["token"] == "theirs"
    (out / ".live.json").unlink()  # the pretend holder on another host would count as live for 20 s


@pytest.mark.slow
def test_a_paused_run_keeps_its_folder_and_a_taken_run_stops_writing(demo, fast, tmp_path):
    """A real CLI run paused with SIGSTOP: its lock holds past any heartbeat; when another host
    takes its folder anyway, it wakes, writes nothing more and says why."""
    import json
    import signal
    import time

    from workbench.errors import UserError
    from workbench.run_folder import RunFolder

    out = tmp_path / "run"
    config = fast.replace(training={"max_steps": 400, "save_steps": 2, "output_dir": str(out)}).save(
        tmp_path / "run.yaml")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", str(config)], cwd=root,
                            env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    folder = RunFolder(out)
    try:
        deadline = time.monotonic() + 240
        while len(folder.metrics()) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and folder.newest_complete() is not None, proc.communicate()
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        old = time.time() - 3600  # as if paused for an hour
        os.utime(folder.lock_file, (old, old))
        assert folder.live() is not None and folder.live().pid == proc.pid
        with pytest.raises(UserError, match="being trained by the CLI"):
            folder.acquire("a resume elsewhere")
        # a process on another host (a shared disk) takes the folder anyway
        taken = lock_body(4242, "another-host", 0.0, owner="a resume on another-host")
        folder.lock_file.write_text(taken)
        before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "status.json", "events.log")}
        checkpoints = folder.checkpoints()
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, stderr[-2000:]
    assert "no longer this process's" in stderr and "a resume on another-host" in stderr, stderr[-2000:]
    assert {name: (out / name).read_bytes() for name in before} == before
    assert folder.checkpoints() == checkpoints and not folder.has_final_adapter()
    assert json.loads(folder.lock_file.read_text())["token"] == "theirs"
    folder.lock_file.unlink()  # the pretend holder on another host would beat for 20 s: not in later tests


# ---- 6. export never deletes a finished export, never writes through a link or into its source ----
def test_export_to_a_link_to_an_empty_folder_writes_into_that_folder(trained_run, tmp_path):
    from workbench.export import export, plan_export

    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "leads (through a link) to" in plan_export(trained_run.output_dir, link).summary()
    written = export(trained_run.output_dir, link)
    assert written == target.resolve() and link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "adapter_model.safetensors").read_bytes() == (
        trained_run.output_dir / "adapter_model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no staging folder left


def test_an_out_folder_filled_during_the_export_keeps_both_and_says_where(trained_run, tmp_path, monkeypatch):
    import workbench.export as export_module
    from workbench.errors import UserError

    out = tmp_path / "out"
    real_copy = export_module.copy_files

    def copy_then_someone_writes(names, dest):
        real_copy(names, dest)
        out.mkdir()
        (out / "theirs.txt").write_text("someone else's")

    monkeypatch.setattr(export_module, "copy_files", copy_then_someone_writes)
    with pytest.raises(UserError, match="finished export is in") as refused:
        export_module.export(trained_run.output_dir, out)
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.exporting-")]
    assert len(staging) == 1 and str(staging[0]) in str(refused.value)
    assert (staging[0] / "adapter_model.safetensors").read_bytes() == (
        trained_run.output_dir / "adapter_model.safetensors").read_bytes()
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


def test_an_out_link_swapped_in_during_the_export_is_left_alone(trained_run, tmp_path, monkeypatch):
    import workbench.export as export_module
    from workbench.errors import UserError

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_copy = export_module.copy_files

    def copy_then_link(names, dest):
        real_copy(names, dest)
        out.symlink_to(elsewhere)

    monkeypatch.setattr(export_module, "copy_files", copy_then_link)
    with pytest.raises(UserError, match="finished export is in"):
        export_module.export(trained_run.output_dir, out)
    assert out.is_symlink() and list(elsewhere.iterdir()) == []
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".out.exporting-")]) == 1


def test_export_inside_the_run_it_reads_is_refused(trained_run, tmp_path):
    from workbench.errors import UserError
    from workbench.export import plan_export

    run = trained_run.output_dir
    checkpoint = sorted(run.glob("checkpoint-*"))[-1]
    for adapter, out in [(run, run / "export"), (run, run), (checkpoint, checkpoint / "x"), (checkpoint, run / "y")]:
        with pytest.raises(UserError, match="inside .*the run the export reads"):
            plan_export(adapter, out)
        assert not out.exists() or out in (run,)


# ---- 4. YAML: aliases, duplicated keys, values of the wrong shape ---------------------------
ALIAS_BOMB = """lora:
  target_modules: &a [q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj, q_proj]
  modules_to_save: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
training:
  seed: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


def test_a_yaml_alias_is_refused_with_a_sentence_before_it_expands(tmp_path):
    import time

    from workbench.errors import UserError
    from workbench.run_folder import RunFolder
    from workbench.settings import RunConfig

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
    for n, text in enumerate([ALIAS_BOMB, "training:\n" + "".join("  " + line + "\n" for line in bomb.splitlines())]):
        path = tmp_path / f"bomb{n}.yaml"
        path.write_text(text)
        started = time.monotonic()
        with pytest.raises(UserError, match=r"uses the alias \*a \(line \d\)") as refused:
            RunConfig.load(path)
        assert time.monotonic() - started < 2 and str(path) in str(refused.value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text(ALIAS_BOMB)
    assert RunFolder(run).config_summary() == ("", 0)  # listing runs never expands one


def test_a_duplicated_yaml_key_is_refused_naming_it(tmp_path):
    from workbench.errors import UserError
    from workbench.settings import RunConfig

    path = tmp_path / "twice.yaml"
    path.write_text("training:\n  max_steps: 5\nlora:\n  rank: 4\ntraining:\n  max_steps: 7\n")
    with pytest.raises(UserError, match="the key 'training' appears twice in one mapping \\(lines 1 and 5\\)"):
        RunConfig.load(path)
    path.write_text("lora:\n  rank: 4\n  alpha: 8\n  rank: 16\n")
    with pytest.raises(UserError, match="'rank' appears twice"):
        RunConfig.load(path)


def test_a_saved_config_reads_back_and_modules_to_save_must_be_names(demo_config, tmp_path):
    from workbench.errors import UserError
    from workbench.settings import RunConfig

    config = demo_config.replace(lora={"modules_to_save": ["lm_head"]},
                                 model={"device_map": {"model.visual": 0, "model.language_model": 0, "lm_head": 0}})
    assert RunConfig.load(config.save(tmp_path / "run.yaml")) == config
    path = tmp_path / "nested.yaml"
    path.write_text("lora:\n  modules_to_save: [[lm_head, lm_head], [lm_head]]\n")
    with pytest.raises(UserError, match="lora.modules_to_save must be a list of module names"):
        RunConfig.load(path)


# ---- 12. numbers nobody can mean ---------------------------------------------------------
def test_a_lora_rank_above_the_smallest_targeted_layer_is_refused(demo, demo_config):
    import json

    from workbench.errors import UserError
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora

    text = json.loads((demo.model / "config.json").read_text())
    text = text.get("text_config", text)
    kv_width = text["num_key_value_heads"] * text["hidden_size"] // text["num_attention_heads"]  # k_proj's output
    model = load_model(str(demo.model), demo_config, device_map={"": "cpu"})
    for rank in (100000, kv_width + 1):
        with pytest.raises(UserError, match=rf"lora.rank {rank} is larger than the smallest layer it targets "
                                            rf"\(.*k_proj: {text['hidden_size']} in, {kv_width} out\).*to {kv_width} or less"):
            apply_lora(model, demo_config.replace(lora={"rank": rank}).lora, False)
    assert not any("lora_" in name for name, _ in model.named_modules())  # refused before peft built anything
    lora = apply_lora(model, demo_config.replace(lora={"rank": kv_width}).lora, False)
    assert any("lora_A" in name for name, _ in lora.named_parameters())


@pytest.mark.parametrize("args, words", [
    (("launch", "--strategy", "ddp", "--nodes", 100000, "--nproc-per-node", 1, "--main-ip", "10.0.0.1"),
     "training.nodes 100000 is more than the 256 nodes"),
    (("launch", "--strategy", "ddp", "--nodes", 200, "--nproc-per-node", 8, "--main-ip", "10.0.0.1"),
     "is 1,600 processes, more than the 1024 GPUs"),
    (("launch", "--strategy", "ddp", "--nodes", 1, "--nproc-per-node", 100000),
     "is 100,000 processes, more than the 1024 GPUs"),
    (("launch", "--strategy", "ddp", "--nodes", 1, "--nproc-per-node", 1, "--max-steps", 99999999999999999999),
     "training.max_steps 99,999,999,999,999,999,999 is more than 1,000,000,000"),
    (("train", "--max-steps", 99999999999999999999), "training.max_steps 99,999,999,999,999,999,999 is more than"),
])
def test_counts_past_any_cluster_or_schedule_are_refused(demo, tmp_path, capsys, args, words):
    code, _, stderr = cli(capsys, *args, "--out" if args[0] == "launch" else "--output-dir", tmp_path / "run")
    assert code == 2 and words in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_a_seed_past_every_generator_is_a_sentence(demo, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"training:\n  seed: {2**70}\n")
    code, _, stderr = cli(capsys, "train", config, "--output-dir", tmp_path / "run")
    assert code == 2 and f"training.seed {2**70} is outside 0..4294967295" in stderr, stderr
    from workbench.settings import RunConfig

    assert RunConfig.from_dict({"training": {"seed": 2**32 - 1}}).training.seed == 2**32 - 1


# ---- 11. a full disk and a damaged checkpoint are sentences -------------------------------
def test_a_full_disk_during_a_checkpoint_save_is_the_disk_full_sentence(fast, tmp_path, monkeypatch):
    """The optimizer's torch.save fails as it does on a full disk (the message torch gives, seen in
    the probe with 0 bytes free)."""
    from transformers import Trainer

    from workbench.training import JobState, TrainingJob

    def save_onto_a_full_disk(self, output_dir):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_onto_a_full_disk)
    out = tmp_path / "run"
    job = TrainingJob(fast.replace(training={"max_steps": 4, "output_dir": str(out)}))
    assert job.run() == JobState.FAILED
    assert job.message.startswith(f"The disk holding {out} is full; no complete checkpoint was saved yet."), job.message
    assert "inline_container" not in job.message


@pytest.fixture(scope="module")
def four_steps(fast, tmp_path_factory):
    """A finished 4-step run with complete checkpoint-2 and checkpoint-4."""
    from workbench.training import JobState, TrainingJob

    out = tmp_path_factory.mktemp("damaged") / "run"
    config = fast.replace(training={"max_steps": 4, "output_dir": str(out)})
    assert TrainingJob(config).run() == JobState.FINISHED
    return config, out


def damage_truncated_weights(checkpoint):
    path = checkpoint / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "adapter_model.safetensors is truncated"


def damage_random_optimizer(checkpoint):
    (checkpoint / "optimizer.pt").write_bytes(os.urandom(4096))
    return "optimizer.pt is not a whole torch.save file"


def damage_trainer_state(checkpoint):
    path = checkpoint / "trainer_state.json"
    path.write_text(path.read_text()[:40])
    return "trainer_state.json is not valid JSON"


@pytest.mark.parametrize("spoil", [damage_truncated_weights, damage_random_optimizer, damage_trainer_state])
def test_a_damaged_newest_checkpoint_is_named_kept_and_the_previous_one_resumed(four_steps, tmp_path, spoil):
    import json
    import shutil

    from workbench.training import JobState, TrainingJob
    from workbench.training.resume import damage

    config, trained = four_steps
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert damage(out / "checkpoint-4") is None and damage(out / "checkpoint-2") is None
    problem = spoil(out / "checkpoint-4")
    spoiled = {p.name: p.read_bytes() for p in (out / "checkpoint-4").iterdir()}
    job = TrainingJob(config.replace(training={"max_steps": 6, "output_dir": str(out)}), resume=True)
    assert job.run() == JobState.FINISHED, job.message
    said = "\n".join(job.log_tail)
    assert f"checkpoint-4 is damaged ({problem}): continuing from checkpoint-2 instead" in said
    assert "kept as checkpoint-4.damaged" in said and "Training from checkpoint-2" in said
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-4.damaged").iterdir()} == spoiled
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_damaged_only_checkpoint_is_refused_and_left_as_it_is(four_steps, tmp_path):
    import shutil

    from workbench.errors import UserError
    from workbench.run_folder import RunFolder
    from workbench.training.resume import usable_checkpoint

    _, trained = four_steps
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    damage_trainer_state(out / "checkpoint-4")
    damage_random_optimizer(out / "checkpoint-2")
    with pytest.raises(UserError, match="checkpoint-4 .* is damaged \\(trainer_state.json is not valid JSON\\) and no "
                                        "earlier complete checkpoint is whole"):
        usable_checkpoint(RunFolder(out), move_aside=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
