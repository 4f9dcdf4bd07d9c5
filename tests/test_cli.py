import json
import os
import re
import subprocess
import sys

from conftest import ROOT, run_cli


def test_infer_answers_differ_after_a_short_run(trained_run, demo):
    row = json.loads(demo.heldout.read_text().splitlines()[0])
    result = run_cli("infer", "--adapter", trained_run.output_dir, "--image", demo.data / row["images"][0],
                     "--prompt", "What color is the shape?", "--json")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["base"]["text"] != answers["adapter"]["text"]
    text = run_cli("infer", "--adapter", trained_run.output_dir, "--image", demo.data / row["images"][0],
                   "--prompt", "What color is the shape?")
    assert "[base]" in text.stdout and "[adapter]" in text.stdout


def test_train_cli_end_to_end(demo, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "workbench", "train", "--output-dir", str(out), "--max-steps", "3",
                             "--save-steps", "2"], capture_output=True, timeout=600, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # bytes: \r must not be translated
    assert result.returncode == 0, result.stderr
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "COMPLETE").is_file()
    # stderr is a pipe here (a cluster job's log): status and step lines are plain lines, no carriage
    # returns (transformers' own loading bar is tqdm's business)
    assert not re.search(rb"\r(step |\d\d:\d\d:\d\d \[)", result.stderr), result.stderr
    assert re.search(rb"\n\d\d:\d\d:\d\d \[finished\] Finished 3 steps", result.stderr), result.stderr
    again = run_cli("train", "--output-dir", out, "--max-steps", 3)
    assert again.returncode == 2 and "already holds files" in again.stderr
    assert "Traceback" not in again.stderr


def test_clear_errors_without_traceback(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [\n")
    cases = [
        (("train", "--dataset", tmp_path / "missing.jsonl", "--output-dir", tmp_path / "r1"), "does not exist"),
        (("train", bad_yaml), "not readable YAML"),
        (("train", "--model", tmp_path, "--dataset", bad_yaml, "--output-dir", tmp_path / "r2"), "not a model folder"),
        (("infer", "--adapter", tmp_path / "nope", "--prompt", "hi"), "does not exist"),
    ]
    for args, words in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_paths_that_do_not_exist_are_named(tmp_path, trained_run):
    from workbench.errors import UserError
    from workbench.inference import prompt_sample
    from workbench.runs import run_info
    from workbench.models import locate_model

    import pytest

    with pytest.raises(UserError, match="does not exist"):
        locate_model(str(tmp_path / "no-such-model"))
    hub = locate_model("Qwen/Qwen2-VL-2B-Instruct")  # a preset's hub id, not downloaded here
    assert (hub.kind, hub.hub_id, hub.local_path) == ("preset", "Qwen/Qwen2-VL-2B-Instruct", None)
    with pytest.raises(UserError, match="is a folder"):
        prompt_sample("What color?", str(tmp_path))
    (tmp_path / "adapter.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_info(tmp_path / "adapter.txt")


def test_final_adapter_is_written_in_one_move(trained_run):
    out = trained_run.output_dir
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / ".adapter-saving").exists()
