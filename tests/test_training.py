import json

import pytest
import torch

from workbench.errors import UserError
from workbench.session import DevicesBusy, Workbench
from workbench.training import JobState, TrainingJob


def test_one_step_changes_only_lora_weights(demo, demo_config, tmp_path):
    from transformers import Trainer

    from workbench.data.collate import Collator
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.training.inputs import build_datasets, build_trainer_args

    config = demo_config.replace(training={"max_steps": 1, "save_steps": 0, "warmup_ratio": 0.0,
                                          "output_dir": str(tmp_path)})
    path = str(demo.model)
    train, _, processor = build_datasets(config, path)
    model = apply_lora(load_model(path, config), config.lora, False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(model=model, args=build_trainer_args(config, False), train_dataset=train,
            data_collator=Collator(processor.tokenizer.pad_token_id)).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed, "nothing trained"
    assert all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)
    assert not any("visual.blocks" in n for n in changed)  # vision tower frozen


def test_run_saves_adapter_that_plain_peft_loads(trained_run, demo):
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    out = trained_run.output_dir
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "run.yaml").is_file()
    base = Qwen2VLForConditionalGeneration.from_pretrained(demo.model)
    model = PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    train = [r for r in rows if r["kind"] == "train"]
    assert all(m["device"] and m["used_bytes"] > 0 and "peak_allocated_bytes" in m and "peak_reserved_bytes" in m
               for r in train for m in r["memory"])
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in train[1:])
    assert train[-1]["eta_s"] == 0 and all(r["eta_s"] > 0 for r in train[:-1] if r["eta_s"] is not None)
    assert trained_run.step == 40


def test_existing_output_dir_is_never_overwritten(demo_config, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files"):
        TrainingJob(demo_config.replace(training={"output_dir": str(tmp_path)}))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_second_start_is_refused_while_running(demo_config, tmp_path):
    session = Workbench()
    job = session.start_training(demo_config.replace(training={"max_steps": 200, "output_dir": str(tmp_path / "a")}))
    try:
        with pytest.raises(DevicesBusy, match="already running"):
            session.start_training(demo_config.replace(training={"output_dir": str(tmp_path / "b")}))
        # another process (a second session stands in for it) sees the run through its live lock
        with pytest.raises(DevicesBusy, match="is training in the app"):
            Workbench().start_training(demo_config.replace(training={"output_dir": str(tmp_path / "c")}))
    finally:
        job.request_stop()
        job.wait(120)
    assert job.state in (JobState.STOPPED, JobState.FINISHED)


def test_bad_dataset_fails_before_loading_the_model(demo_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>hi"},
                                            {"role": "assistant", "content": "x"}],
                               "images": ["missing.png"]}) + "\n")
    job = TrainingJob(demo_config.replace(data={"train_path": str(bad)},
                                          training={"output_dir": str(tmp_path / "run")}))
    assert job.run() == JobState.FAILED
    assert "row 1" in job.message and "missing" in job.message
    assert job.exit_code == 2
