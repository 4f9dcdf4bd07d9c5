"""Scale-out decisions that need no second process: batch split, launch files, failure sentences,
the vision tower kept in every step, ranks that build the model without reading its weights."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from workbench.errors import UserError
from workbench.run_folder import RunFolder
from workbench.settings import RunConfig, TrainingSettings
from workbench.training import launch_plan as dist_plan

TORCHRUN_TABLE = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
workbench.training.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-29_14:42:42
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 28159)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 28159
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_14:42:42
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 28160)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 28160
============================================================
"""


@pytest.mark.parametrize("batch, accumulation, world, per_device, per_process, effective", [
    (1, 8, 2, 1, 4, 8),  # accumulation divided: the planned 8 rows per step
    (1, 8, 4, 1, 2, 8),
    (2, 8, 8, 2, 1, 16),  # 8 processes with accumulation 1: each step sees 2 x 8
    (8, 1, 2, 4, 1, 8),  # nothing to accumulate: the per-process batch is halved instead
    (4, 6, 4, 2, 3, 24),
    (3, 1, 2, 2, 1, 4),  # cannot divide: the nearest step, never more rows per micro-step
    (8, 1, 1, 8, 1, 8),
])
def test_the_planned_batch_is_split_over_the_processes(batch, accumulation, world, per_device, per_process, effective):
    split = dist_plan.split_batch(TrainingSettings(per_device_train_batch_size=batch,
                                                   gradient_accumulation_steps=accumulation), world)
    assert (split.per_device, split.accumulation, split.effective) == (per_device, per_process, effective)
    assert split.per_device <= batch
    sentence = split.sentence()
    assert f"= {effective} rows per step" in sentence
    assert ("cannot be split evenly" in sentence) == (effective != batch * accumulation)


def test_a_batch_that_cannot_be_split_says_what_to_change():
    # Was: "the planned 1 x 1 = 1 does not divide over 4 processes", with no way out.
    for batch, accumulation, world, fits in [(1, 1, 4, 4), (3, 1, 2, 2), (2, 3, 4, 4), (1, 5, 4, 8)]:
        split = dist_plan.split_batch(TrainingSettings(per_device_train_batch_size=batch,
                                                       gradient_accumulation_steps=accumulation), world)
        sentence = split.sentence()
        assert f"not the planned {batch} x {accumulation} = {batch * accumulation}" in sentence
        assert f"set training.gradient_accumulation_steps to {fits} ({batch * fits} rows per step)" in sentence
        assert "training.nproc_per_node" in sentence
        exact = dist_plan.split_batch(TrainingSettings(per_device_train_batch_size=batch,
                                                       gradient_accumulation_steps=fits), world)
        assert exact.exact  # the advice is right: that accumulation splits evenly


def test_the_start_message_says_how_the_batch_is_divided(demo_config):
    from workbench.ui.training_tab import batch_note

    one = batch_note(demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8}))
    assert one == " Effective batch: 1 x 8 = 8 rows per step."
    ddp = batch_note(demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8,
                                                   "strategy": "ddp", "nproc_per_node": 4}))
    assert "1 row x 2 accumulation x 4 processes = 8 rows per step" in ddp
    assert "gradient accumulation divided by the 4 processes" in ddp


def test_fsdp_config_shards_every_layer_and_block_and_loads_on_rank_zero(demo_config):
    config = demo_config.replace(training={"strategy": "fsdp", "gradient_checkpointing": True})
    raw = dist_plan.accelerate_config(config, nodes=2, nproc=4, machine_rank=0, main_ip="10.0.0.1", main_port=29600)
    assert (raw["distributed_type"], raw["num_machines"], raw["num_processes"]) == ("FSDP", 2, 8)
    assert (raw["main_process_ip"], raw["main_process_port"], raw["use_cpu"]) == ("10.0.0.1", 29600, False)
    fsdp = raw["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == ["Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"]
    assert fsdp["fsdp_activation_checkpointing"] is False  # transformers' own (see launch_plan.py)
    ddp = dist_plan.accelerate_config(demo_config.replace(training={"strategy": "ddp"}), 1, 2)
    assert ddp["distributed_type"] == "MULTI_GPU" and "fsdp_config" not in ddp


@pytest.mark.parametrize("model, classes", [
    ("demo-qwen2.5-vl", "Qwen2_5_VLDecoderLayer,Qwen2_5_VLVisionBlock"),
    ("demo-qwen3-vl", "Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock"),
    ("qwen2.5-vl-72b-instruct", "Qwen2_5_VLDecoderLayer,Qwen2_5_VLVisionBlock"),  # a preset: its bundled config
    ("someone/Qwen3-VL-8B-finetuned", "Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock"),  # not here: by its name
])
def test_fsdp_wraps_the_layers_of_the_models_own_family(demo_config, model, classes):
    config = demo_config.replace(model={"name_or_path": model}, training={"strategy": "fsdp"})
    assert dist_plan.accelerate_config(config, 1, 2)["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == classes


def test_fsdp_refuses_what_it_cannot_shard(demo_config):
    config = demo_config.replace(model={"name_or_path": "my-org/some-vl-model"}, training={"strategy": "fsdp"})
    with pytest.raises(UserError, match="wrap classes are unknown"):
        dist_plan.accelerate_config(config, 1, 2)
    with pytest.raises(UserError, match="model.quantization is int8, which fsdp cannot shard"):
        dist_plan.check_strategy(demo_config.replace(model={"quantization": "int8"}, training={"strategy": "fsdp"}))
    dist_plan.check_strategy(demo_config.replace(model={"quantization": "nf4"}, training={"strategy": "fsdp"}))
    dist_plan.check_strategy(demo_config.replace(model={"quantization": "int8"}, training={"strategy": "ddp"}))


def test_fsdp_on_a_4bit_base_loads_on_every_rank(demo_config):
    """accelerate broadcasts no 4-bit weights from rank 0: transformers must load them on every rank
    (its efficient loading would leave ranks > 0 empty) and each rank quantises its own copy."""
    config = demo_config.replace(model={"quantization": "nf4"}, training={"strategy": "fsdp"})
    fsdp = dist_plan.accelerate_config(config, 1, 2)["fsdp_config"]
    assert not fsdp["fsdp_cpu_ram_efficient_loading"] and not fsdp["fsdp_sync_module_states"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_a_launch_refuses_device_map_and_several_nodes_from_one_machine(demo_config):
    with pytest.raises(UserError, match="runs in one process"):
        dist_plan.check_strategy(demo_config)
    with pytest.raises(UserError, match="python -m workbench launch"):
        dist_plan.check_strategy(demo_config.replace(training={"strategy": "ddp", "nodes": 2}))
    with pytest.raises(UserError, match="device_map is off under a distributed launch"):
        dist_plan.check_strategy(demo_config.replace(model={"device_map": {"": "cpu"}}, training={"strategy": "fsdp"}))
    dist_plan.check_strategy(demo_config.replace(training={"strategy": "fsdp", "nodes": 2}), nodes_allowed=True)


def test_torchruns_failure_table_names_the_rank_that_ended_the_run(tmp_path):
    ends = dist_plan.failed_processes(TORCHRUN_TABLE)
    assert ends[0] == dist_plan.ProcessEnd(rank=1, exitcode=-9, signal="SIGKILL")  # the root cause first
    assert ends[1].rank == 0 and ends[1].signal == "SIGTERM"
    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoint-4").mkdir()
    folder.mark_complete(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-6").mkdir()  # incomplete: never named
    sentence = dist_plan.explain_launch_failure(folder, 1, TORCHRUN_TABLE)
    assert sentence.startswith("Rank 1 was killed (SIGKILL); every rank stopped")
    assert "checkpoint-4" in sentence and "checkpoint-6" not in sentence and "--resume" in sentence
    # a rank that raised says why; rank 0's own failure because its peer vanished does not count
    dist_plan.write_rank_failure(folder, 0, "Training stopped on every rank: Connection reset by peer", secondary=True)
    dist_plan.write_rank_failure(folder, 1, "Training stopped: loss became nan at step 5", secondary=False)
    assert dist_plan.explain_launch_failure(folder, 1, "").startswith("Rank 1 failed: Training stopped: loss became nan")
    assert dist_plan.explain_launch_failure(RunFolder(tmp_path / "none"), 1, "").startswith(
        "accelerate launch ended with exit code 1")


def launch(capsys, *args) -> tuple[int, str, str]:
    """``python -m workbench launch ...`` in this process: (exit code, stdout, stderr)."""
    from workbench.cli.main import main

    code = main(["launch", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_launch_writes_the_files_for_two_nodes_and_refuses_what_it_cannot_do(demo, tmp_path, capsys):
    out = tmp_path / "cluster-run"
    code, stdout, stderr = launch(capsys, "--strategy", "fsdp", "--nodes", 2, "--nproc-per-node", 4, "--main-ip",
                                  "10.1.2.3", "--main-port", 29700, "--max-steps", 50, "--out", out)
    assert code == 0, stderr
    assert "bash " + str(out / "launch" / "node-0.sh") in stdout and "node 1" in stdout
    assert "1 row x 1 accumulation x 8 processes = 8 rows per step, the planned 8 x 1" in stdout
    config = RunConfig.load(out / "run.yaml")
    assert (config.training.strategy, config.training.nodes, config.training.nproc_per_node) == ("fsdp", 2, 4)
    assert config.training.output_dir == str(out) and config.training.max_steps == 50
    raw = yaml.safe_load((out / "launch" / "accelerate.yaml").read_text())
    assert (raw["num_machines"], raw["num_processes"], raw["main_process_ip"]) == (2, 8, "10.1.2.3")
    for node in (0, 1):
        script = out / "launch" / f"node-{node}.sh"
        text = script.read_text()
        assert os.access(script, os.X_OK) and f"--machine_rank {node}" in text
        assert "workbench.training.worker" in text and str(out) in text and '"$@"' in text
    code, _, stderr = launch(capsys, "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1, "--main-ip", "h",
                             "--out", out)
    assert code == 2 and "nothing was overwritten" in stderr
    for args, words in [(("--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1), "--main-ip is needed"),
                        (("--strategy", "ddp", "--nodes", 1), "--nproc-per-node is needed"),
                        (("--nodes", 1, "--nproc-per-node", 1), "pass --strategy ddp"),
                        (("--strategy", "fsdp", "--nodes", 1, "--nproc-per-node", 1, "--main-port", 70000), "--main-port")]:
        code, _, stderr = launch(capsys, *args, "--out", tmp_path / "x")
        assert code == 2 and words in stderr and "Traceback" not in stderr, (args, stderr)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"])
def test_text_only_batches_run_the_vision_tower_with_zero_effect(name, demo_config):
    """The dummy image changes neither the loss nor any gradient, but gives the tower a graph (every family)."""
    from workbench.data.collate import Collator, SampleEncoder
    from workbench.demo import ensure_demo
    from workbench.data.sample import Sample, Turn
    from workbench.training.loading import load_model, load_processor
    from workbench.training.lora import apply_lora
    from workbench.training.vision_sync import keep_vision_tower_in_step

    demo = ensure_demo(name=name)
    processor = load_processor(str(demo.model))
    encoder = SampleEncoder(processor, 256, 3136, 112 * 112)
    text_only = Sample(turns=[Turn("user", "Say hello."), Turn("assistant", "hello")], row=1)
    batch = Collator(processor.tokenizer.pad_token_id)([encoder.encode(text_only)])
    assert "pixel_values" not in batch

    def loss_and_grads(hooked: bool):
        torch.manual_seed(0)
        model = apply_lora(load_model(str(demo.model), demo_config, device_map={"": "cpu"}), demo_config.lora, False)
        if hooked:
            assert keep_vision_tower_in_step(model) == 1
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain = loss_and_grads(False)
    hooked_loss, hooked = loss_and_grads(True)
    assert torch.equal(plain_loss, hooked_loss)
    merger = [n for n in plain if "visual.merger" in n]
    assert merger and all(plain[n] is None for n in merger)  # without the hook: no gradient at all
    assert all(hooked[n] is not None and not hooked[n].any() for n in merger)  # with it: exactly zero
    assert all(torch.equal(plain[n], hooked[n]) for n in plain if plain[n] is not None)


def test_ranks_other_than_zero_build_the_model_without_its_weights(demo, demo_config, tmp_path):
    """Only config.json is read; parameter storage is reserved, not written (FSDP2 fills the shards)."""
    import shutil

    from workbench.training.placement import empty_model

    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(demo.model / "config.json", folder / "config.json")  # no weights file at all
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", {})
    config["text_config"] = {**text, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
                             "num_attention_heads": 8, "num_key_value_heads": 2,
                             "layer_types": ["full_attention"] * 8}
    (folder / "config.json").write_text(json.dumps(config))
    before = resident()
    model = empty_model(str(folder), demo_config)
    grew = resident() - before
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert size > 400 * 2**20 and grew < size / 4, (size, grew)
    assert all(p.device.type == "cpu" for p in model.parameters())
    inv_freq = dict(model.named_buffers())["model.language_model.rotary_emb.inv_freq"]
    assert inv_freq[0] == 1.0 and torch.isfinite(inv_freq).all()  # buffers computed, not left empty


def resident() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_stop_reaches_a_run_of_another_process_through_its_folder(tmp_path):
    from workbench.session import Workbench
    from workbench.training.launch_plan import stop_file

    session = Workbench()
    assert session.stop_training() == "Nothing is running."
    with pytest.raises(UserError, match="not a run folder"):
        session.watch(tmp_path)
    RunConfig().save(tmp_path / "run.yaml")
    assert session.watch(tmp_path).startswith("Watching")
    assert session.watched_run() == RunFolder(tmp_path)
    assert session.stop_training() == "Nothing is running."  # not live: nothing to stop
    assert not stop_file(RunFolder(tmp_path)).exists()
    assert Path(tmp_path / "run.yaml").is_file()
