"""Adapter-only export, the refusals, and kill -9 in the middle of an export (real subprocesses)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from export_helpers import heldout_inputs, load_with_adapter, logits, max_difference, random_adapter, set_config


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """The trained run, copied so a test may add rows to its metrics."""
    folder = tmp_path_factory.mktemp("run") / "colours"
    shutil.copytree(trained_run.output_dir, folder)
    return folder


def export(adapter, out, **kwargs):
    from workbench.export import export as run

    return run(adapter, out, **kwargs)


# ---------------------------------------------------------------------------- adapter only
def test_adapter_export_loads_in_plain_peft_with_a_card(run_copy, trained_run, demo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from workbench.inference import heldout_samples

    out = export(run_copy, tmp_path / "adapter")
    files = ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
             "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "workbench-export.json"])
    manifest = json.loads((out / "workbench-export.json").read_text())
    assert manifest == {"kind": "adapter", "adapter": str(run_copy.resolve()), "base": str(Path(demo.model).resolve()),
                        "dtype": "", "files": sorted(files)}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(demo.model).resolve())
    assert (out / "adapter_model.safetensors").read_bytes() == (run_copy / "adapter_model.safetensors").read_bytes()

    # plain peft, with the base named by the exported config, answers as the run's own adapter
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    inputs = heldout_inputs(AutoProcessor.from_pretrained(str(out)), heldout_samples(demo.heldout, 2))
    assert max_difference(logits(model, inputs), logits(load_with_adapter(demo.model, trained_run.output_dir),
                                                         inputs)) == 0

    card = (out / "README.md").read_text()
    last_loss = [json.loads(line)["loss"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()][-1]
    assert "library_name: peft" in card and "| Steps | 40 of 40 |" in card
    assert f"| Final training loss | {last_loss:.4f} |" in card
    assert "| Held-out (eval) loss | not measured |" in card
    assert "| Data file | the demo's train.jsonl |" in card and "| LoRA rank | 16 |" in card


def test_card_shows_the_held_out_loss_and_a_checkpoint_its_own_step(run_copy, tmp_path):
    metrics = run_copy / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    loss_at_20 = [r["loss"] for r in rows if r["step"] <= 20][-1]
    with metrics.open("a") as f:
        f.write(json.dumps({"kind": "eval", "step": 40, "eval_loss": 1.2345}) + "\n")
    assert "| Held-out (eval) loss | 1.2345 |" in (export(run_copy, tmp_path / "a") / "README.md").read_text()
    card = (export(run_copy / "checkpoint-20", tmp_path / "b") / "README.md").read_text()
    assert "| Steps | 20 of 40 |" in card and f"| Final training loss | {loss_at_20:.4f} |" in card
    assert "| Held-out (eval) loss | not measured |" in card  # the eval row came after step 20


# ---------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def unfinished_run(trained_run, tmp_path_factory):
    """A run killed after checkpoint-20: no final adapter."""
    folder = tmp_path_factory.mktemp("unfinished") / "killed"
    shutil.copytree(trained_run.output_dir / "checkpoint-20", folder / "checkpoint-20")
    shutil.copy(trained_run.output_dir / "run.yaml", folder / "run.yaml")
    rows = (trained_run.output_dir / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("\n".join(r for r in rows if json.loads(r)["step"] <= 25) + "\n")
    return folder


def refusal(adapter, out, **kwargs) -> str:
    from workbench.errors import UserError

    with pytest.raises(UserError) as caught:
        export(adapter, out, **kwargs)
    return str(caught.value)


def test_unfinished_run_is_refused_with_its_newest_complete_checkpoint(unfinished_run, tmp_path):
    message = refusal(unfinished_run, tmp_path / "out", merge=True)
    assert "did not finish" in message and "step 25 of 40" in message
    assert f"--adapter {unfinished_run / 'checkpoint-20'}" in message
    assert not (tmp_path / "out").exists()
    out = export(unfinished_run / "checkpoint-20", tmp_path / "out", merge=True)  # the offered way works
    assert (out / "model.safetensors").is_file()


def test_a_run_training_in_any_process_is_refused(run_copy, tmp_path):
    from workbench.run_folder import RunFolder

    with RunFolder(run_copy).acquire("another process"):  # what a live training job holds
        assert "still training" in refusal(run_copy, tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()


def test_adapter_of_another_base_is_refused_by_its_shapes(trained_run, tmp_path, demo):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from workbench.demo import demo_model_config

    processor = AutoProcessor.from_pretrained(demo.model)
    config = demo_model_config(processor.tokenizer)
    config.text_config.hidden_size = config.vision_config.hidden_size = 32
    other = tmp_path / "other-base"
    Qwen2VLForConditionalGeneration(config).save_pretrained(other)
    for merge in (True, False):
        message = refusal(trained_run.output_dir, tmp_path / "out", merge=merge, base=str(other))
        assert "does not fit the base" in message and "--base" in message
        assert "model.language_model.layers.0.mlp.down_proj maps 128 -> 64 features in the adapter and 128 -> 32 " \
               "in the base" in message, message
    assert not (tmp_path / "out").exists()


def test_output_folder_with_files_is_refused_and_left_alone(trained_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "already holds files" in refusal(trained_run.output_dir, out, merge=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert "is a file" in refusal(trained_run.output_dir, out / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export(trained_run.output_dir, empty) / "adapter_model.safetensors").is_file()  # an empty one is fine


def test_too_little_disk_is_refused_before_anything_is_written(trained_run, tmp_path, monkeypatch):
    import workbench.export.folder as folder

    real = shutil.disk_usage
    monkeypatch.setattr(folder.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    message = refusal(trained_run.output_dir, tmp_path / "sub" / "out", merge=True)
    assert "1.00 MiB free" in message and "needs 8" in message
    assert list(tmp_path.iterdir()) == []  # not even the parent or a staging folder


def test_kinds_that_cannot_be_merged_are_refused(trained_run, demo, tmp_path):
    pissa = tmp_path / "pissa"
    shutil.copytree(trained_run.output_dir, pissa, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((pissa / "adapter_config.json").read_text())
    (pissa / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    assert "pissa" in refusal(pissa, tmp_path / "m", merge=True)
    assert export(pissa, tmp_path / "a").is_dir()  # adapter-only still works

    quantised = tmp_path / "quantised-base"
    shutil.copytree(demo.model, quantised)
    set_config(quantised, quantization_config={"quant_method": "gptq", "bits": 4})
    assert "quantised checkpoint (gptq)" in refusal(trained_run.output_dir, tmp_path / "m", merge=True, base=str(quantised))

    other_family = tmp_path / "llava"
    shutil.copytree(demo.model, other_family)
    set_config(other_family, model_type="llava")
    assert "'llava' model" in refusal(trained_run.output_dir, tmp_path / "m", merge=True, base=str(other_family))

    pickled = tmp_path / "bin-base"
    shutil.copytree(demo.model, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    assert "no safetensors weights" in refusal(trained_run.output_dir, tmp_path / "m", merge=True, base=str(pickled))
    assert "--dtype applies to a merged export" in refusal(trained_run.output_dir, tmp_path / "m", dtype="bf16")
    assert not (tmp_path / "m").exists()


def test_damaged_or_nan_adapters_are_refused(demo, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = random_adapter(demo.model, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    name = next(k for k in tensors if k.endswith("lora_B.weight"))
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, str(adapter / "adapter_model.safetensors"))
    assert "non-finite" in refusal(adapter, tmp_path / "m", merge=True)
    save_file({k: v for k, v in tensors.items() if k != name}, str(adapter / "adapter_model.safetensors"))
    assert "no lora_A/lora_B pair" in refusal(adapter, tmp_path / "m", merge=True)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_disk_filling_up_midway_is_one_sentence_and_leaves_nothing(trained_run, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert "filled up during the export" in refusal(trained_run.output_dir, tmp_path / "m", merge=True)
    assert list(tmp_path.iterdir()) == []  # neither --out nor the staging folder


# ---------------------------------------------------------------------------- kill -9
# Runs `python -m workbench export ...`; with $WB_KILL_AT=shard:N the process SIGKILLs itself
# while writing shard N (earlier shards written), with before-publish just before the final move.
KILL_HOOK = """
import os, runpy, signal, sys
where, _, n = os.environ.get("WB_KILL_AT", "").partition(":")
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if where == "shard":
    import safetensors.torch
    real_save, written = safetensors.torch.save_file, []
    def save_file(tensors, filename, metadata=None):
        if len(written) + 1 == int(n):
            die()
        written.append(filename)
        return real_save(tensors, filename, metadata=metadata)
    safetensors.torch.save_file = save_file
elif where == "before-publish":
    import workbench.export as export
    export.publish = lambda staging, out: die()
sys.argv = ["python -m workbench", *sys.argv[1:]]
runpy.run_module("workbench", run_name="__main__", alter_sys=True)
"""


def export_process(args: list, kill_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WB_KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-c", KILL_HOOK, "export", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_kill_nine_during_an_export_leaves_no_complete_looking_folder(trained_run, tmp_path):
    out = tmp_path / "merged"
    args = ["--adapter", trained_run.output_dir, "--out", out, "--merge", "--max-shard-size", "200KB"]
    for kill_at, last_line in (("shard:3", "Writing model-00003"), ("before-publish", "writing the model card")):
        killed = export_process(args, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert last_line in killed.stdout.strip().splitlines()[-1]
        assert (not out.exists()) if kill_at == "shard:3" else list(out.iterdir()) == []
        leftovers = list(tmp_path.glob(".merged.exporting-*"))  # hidden, and only the newest one
        assert len(leftovers) == 1 and any(leftovers[0].glob("model-*.safetensors"))
        out.mkdir(exist_ok=True)  # the second time, into an empty folder the user made

    again = run_cli("export", *args)
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob(".merged.exporting-*"))  # the dead export's staging folder is gone
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert all((out / name).is_file() for name in set(index["weight_map"].values()))


def test_cli_export_prints_the_plan_and_json(trained_run, tmp_path):
    check = run_cli("export", "--adapter", trained_run.output_dir, "--out", tmp_path / "m", "--merge", "--check",
                    "--json")
    assert check.returncode == 0, check.stderr
    plan = json.loads(check.stdout.strip().splitlines()[-1])
    assert plan["merge"] and plan["shards"] == 1 and plan["bytes_needed"] > 0 and not (tmp_path / "m").exists()
    refused = run_cli("export", "--adapter", tmp_path / "nowhere", "--out", tmp_path / "m")
    assert refused.returncode == 2 and refused.stderr.startswith("error: Run folder") and "Traceback" not in refused.stderr
