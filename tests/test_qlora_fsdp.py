"""FSDP2 over a 4-bit (nf4) base on two CPU processes (gloo, bitsandbytes' CPU kernels): every
rank quantises the base, FSDP2 shards the packed weights, and the adapter is the one-process
QLoRA adapter (docs/qlora-fsdp.md)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from test_scale_out import assert_same_adapter, assert_same_heldout_answers, cli, nf4_loads, reaper, rows, wait_for  # noqa: F401
from workbench.run_folder import RunFolder


@pytest.fixture(autouse=True)
def bounded_collectives(monkeypatch):
    monkeypatch.setenv("WORKBENCH_COLLECTIVE_TIMEOUT_S", "120")


@pytest.mark.parametrize("dtype, storage", [
    ("bf16", "torch.bfloat16"),
    pytest.param("auto", "torch.float32", marks=pytest.mark.slow),  # the CPU runs' storage, also in the run below
])
def test_a_sharded_4bit_layer_computes_what_the_whole_one_did(dtype, storage):
    """bitsandbytes' packed nf4 weights in a float container (fp32: the CPU's dtype; bf16: the GPUs')
    go through FSDP2's all-gather byte for byte, and each Linear4bit finds its quantisation state
    again on its module: the same output and LoRA gradients as unsharded (about 20 s each)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "qlora_fsdp.py"), "--nproc", "2",
                             "--dtype", dtype], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["world"] == 2 and report["storage_dtype"] == storage
    assert (report["sharded_4bit"], report["all_4bit"]) == (14, 14)  # 2 layers x 7 linears
    assert report["packed_bytes_survive_all_gather"]
    assert report["forward_max_abs_diff"] == 0.0 and report["lora_grad_max_abs_diff"] == 0.0


def test_a_run_refuses_packed_4bit_weights_that_changed_on_the_way(demo, demo_config):
    """bitsandbytes #1945: FSDP2 on CUDA may rewrite bytes inside bf16-stored nf4 weights. A run
    fingerprints one packed weight before sharding and stops with a sentence if it changed."""
    import torch

    from workbench.errors import UserError
    from workbench.training.fsdp_4bit import check_fingerprint, fingerprint
    from workbench.training.loading import load_model

    model = load_model(str(demo.model), demo_config.replace(model={"quantization": "nf4"}), device_map={"": "cpu"})
    packed = fingerprint(model)
    assert packed[0] == "model.language_model.layers.0.self_attn.q_proj"
    check_fingerprint(model, packed)  # unchanged: nothing to say
    weight = model.get_submodule(packed[0]).weight
    raw = weight.data.view(torch.uint8)
    raw[0] ^= 1  # one bit of one packed nibble pair
    with pytest.raises(UserError, match=r"changed the packed 4-bit weights of model.language_model.layers.0.self_attn"
                                        r".q_proj .*#1945.*strategy ddp or device_map"):
        check_fingerprint(model, packed)
    assert fingerprint(load_model(str(demo.model), demo_config, device_map={"": "cpu"})) is None  # not quantised


@pytest.mark.slow  # about 3 minutes: one process, then a launch of 2 stopped with Ctrl-C and resumed
def test_fsdp_on_a_4bit_base_stopped_and_resumed_matches_the_one_process_qlora_run(demo, demo_config, tmp_path,
                                                                                   reaper):
    from workbench.paths import log_file
    from workbench.training import JobState, TrainingJob

    qlora = demo_config.replace(model={"quantization": "nf4"})
    single = tmp_path / "one"
    job = TrainingJob(qlora.replace(training={"max_steps": 40, "save_steps": 0, "output_dir": str(single)}))
    assert job.run() == JobState.FINISHED, job.message

    out = tmp_path / "fsdp"
    reaper(out)
    folder = RunFolder(out)
    config_file = qlora.replace(training={"max_steps": 40, "save_steps": 4}).save(tmp_path / "run.yaml")
    before, log_before = nf4_loads(), log_file().stat().st_size if log_file().exists() else 0
    proc = cli("train", config_file, "--strategy", "fsdp", "--nproc", 2, "--output-dir", out)
    wait_for(lambda: folder.newest_complete() is not None, proc=proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Starting 2 processes (FSDP)" in stderr and "Stopped at step" in stdout
    assert nf4_loads() - before == 2  # each rank quantised its own copy
    with open(log_file(), encoding="utf-8") as f:
        f.seek(log_before)
        assert "FSDP2 shards 14 of 14 4-bit weights over 2 ranks" in f.read()
    stopped_at = int(stdout.split("Stopped at step ")[1].split(";")[0])
    assert stopped_at < 40 and (out / f"checkpoint-{stopped_at}" / "COMPLETE").is_file()

    proc = cli("train", "--resume", "--output-dir", out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"Training from checkpoint-{stopped_at}" in stderr and "Finished 40 steps" in stdout
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and "quantization_config" not in json.dumps(adapter)
    assert [r["step"] for r in rows(out) if r.get("kind") == "train"][-1] == 40
    assert_same_adapter(single, out)
    assert_same_heldout_answers(demo, demo_config, single, out)
