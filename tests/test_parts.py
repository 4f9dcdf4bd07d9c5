"""What to train (issue 22): the vision tower, the merger and the language model, each frozen, LoRA or
full, each at its own rate. Table-driven over every family's demo: gradients reach exactly the chosen
parts, frozen weights stay bit-identical, the optimizer holds each part's rate, resume restores every
group's state, and the adapter loads in plain PEFT with the same logits."""

import argparse

import pytest
import torch

from workbench.errors import UserError
from workbench.settings import RunConfig

DEMOS = ("demo", "demo-qwen2.5-vl", "demo-qwen3-vl")
# (lora overrides, {part: expected mode}, {part: expected rate}) with training.learning_rate 1e-3
CASES = {
    "language-lora": ({"recipe": "language-lora"}, {"vision": "frozen", "merger": "frozen", "language": "lora"}, {}),
    "merger-full": ({"recipe": "merger-full", "merger_lr": 2e-3}, {"vision": "frozen", "merger": "full", "language": "lora"},
                    {"merger": 2e-3, "language": 1e-3}),
    "vision-lora": ({"recipe": "vision-lora", "vision_lr": 5e-4}, {"vision": "lora", "merger": "lora", "language": "lora"},
                    {"vision": 5e-4, "merger": 1e-3, "language": 1e-3}),
    "vision-full-only": ({"vision": "full", "merger": "lora", "language": "frozen", "vision_lr": 3e-4},
                         {"vision": "full", "merger": "lora", "language": "frozen"}, {"vision": 3e-4, "merger": 1e-3}),
}


# ---- settings: YAML = CLI = LoRA tab -------------------------------------------------------------
def test_recipes_fill_the_parts_and_fields_override_them():
    assert RunConfig().lora.parts() == {"vision": "frozen", "merger": "frozen", "language": "lora"}
    demo = RunConfig.from_dict({"lora": {"target_modules": "language-and-merger"}})
    assert demo.lora.parts() == {"vision": "frozen", "merger": "lora", "language": "lora"}  # today's demo
    only = RunConfig.from_dict({"lora": {"recipe": "merger-only"}})
    assert only.lora.parts() == {"vision": "frozen", "merger": "full", "language": "frozen"}
    mixed = RunConfig.from_dict({"lora": {"recipe": "merger-only", "vision": "lora"}})
    assert mixed.lora.parts() == {"vision": "lora", "merger": "full", "language": "frozen"}
    again = RunConfig.from_dict(__import__("yaml").safe_load(mixed.to_yaml()))
    assert again.lora.parts() == mixed.lora.parts()


@pytest.mark.parametrize("lora, field", [
    ({"recipe": "language-lora", "language": "frozen"}, "lora.recipe"),  # all frozen: nothing trains
    ({"recipe": "vision-only"}, "lora.recipe"),
    ({"merger": "half"}, "lora.merger"),
    ({"vision_lr": 1e-5}, "lora.vision_lr"),  # a rate for a frozen part
    ({"recipe": "merger-only", "merger_lr": -1.0}, "lora.merger_lr"),
    ({"recipe": "merger-only", "merger_lr": float("nan")}, "lora.merger_lr"),
])
def test_bad_part_settings_are_refused_naming_the_field(lora, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        RunConfig.from_dict({"lora": lora})


def test_weight_decay_is_checked_and_reaches_trainer():
    with pytest.raises(UserError, match=r"training\.weight_decay"):
        RunConfig.from_dict({"training": {"weight_decay": 2.0}})
    from workbench.training.inputs import build_trainer_args

    config = RunConfig.from_dict({"training": {"weight_decay": 0.05}})
    assert build_trainer_args(config, has_eval=False, output_dir="/tmp/unused").weight_decay == 0.05


def test_cli_flags_set_the_same_fields():
    from workbench.cli.train import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "demo", "--vision", "lora", "--merger", "full",
                              "--merger-lr", "1e-3", "--vision-lr", "2e-5"])
    lora = config_from_args(args).lora
    assert (lora.vision, lora.merger, lora.vision_lr, lora.merger_lr) == ("lora", "full", 2e-5, 1e-3)
    assert lora.parts() == {"vision": "lora", "merger": "full", "language": "lora"}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--vision", "half"])


def test_lora_tab_round_trips_the_parts():
    from workbench.ui import lora_tab as tab

    config = RunConfig.from_dict({"lora": {"recipe": "merger-full", "vision": "lora", "vision_lr": 1e-5}}).to_dict()
    raw = tab.raw_from_form(tab.form_values(config))
    assert RunConfig.from_dict(raw).lora == RunConfig.from_dict(config).lora
    assert [choice for choice in tab.CHOICES[("lora", "vision")] if choice != tab.CHOICES[("lora", "vision")][0]] \
        == ["frozen", "lora", "full"]


# ---- the model: what trains, at which rate ------------------------------------------------------
def _setup(name, lora, tmp_path, steps=2, **training):
    """(trainer, snapshot of every weight before training, family) for ``name`` and ``lora``."""
    from workbench.data.collate import Collator
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.models.families import family_of
    from workbench.training.job import trainer_class
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.training.parts import rates
    from workbench.training.inputs import build_datasets, build_trainer_args

    path = str(ensure_demo(name=name).model)
    config = RunConfig.from_dict(DEMO_TRAINING).replace(
        model={"name_or_path": name}, lora=lora,
        training={"max_steps": steps, "save_steps": 0, "output_dir": str(tmp_path), "learning_rate": 1e-3,
                  "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "per_device_train_batch_size": 2,
                  **training})
    torch.manual_seed(0)
    model = apply_lora(load_model(path, config), config.lora, False)
    train_set, _, processor = build_datasets(config, path)
    trainer = trainer_class()(model=model, args=build_trainer_args(config, has_eval=False), train_dataset=train_set,
                              data_collator=Collator(processor.tokenizer.pad_token_id),
                              part_rates=rates(config.lora, 1e-3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return trainer, before, family_of(model.config)


def _base_count(model, family, part):
    """Parameters of ``part`` in the base (the original modules, not peft's trained copies), counted
    from the tower's children (independent of part_of)."""
    tower = model.get_base_model().get_submodule(family.visual)

    def count(module):
        return sum(p.numel() for n, p in module.named_parameters() if "modules_to_save." not in n)

    merger = sum(count(m) for name, m in tower.named_children() if name in ("merger", "deepstack_merger_list"))
    return merger if part == "merger" else count(tower) - merger


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", DEMOS)
def test_gradients_reach_exactly_the_chosen_parts(name, case, tmp_path):
    from peft.utils import ModulesToSaveWrapper

    from workbench.training.parts import part_of, trainable_by_part

    lora, modes, part_rates = CASES[case]
    trainer, before, family = _setup(name, lora, tmp_path)
    model = trainer.model
    counts = trainable_by_part(model, family)
    for part, mode in modes.items():
        assert (counts[part]["lora"] > 0) == (mode == "lora"), (part, counts)
        if mode == "full" and part != "language":  # every weight of the part, once, trains
            originals = [m.original_module for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
            assert originals
            assert counts[part]["full"] == _base_count(model, family, part)
        elif mode != "full":
            assert counts[part]["full"] == 0, (part, counts)

    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    model(**batch).loss.backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0 or ".lora_B." in param_name \
                or ".lora_A." in param_name, param_name  # lora_A's gradient is 0 while lora_B starts at 0
        else:
            assert param.grad is None, param_name
    trained_parts = {part_of(n, family) for n, p in model.named_parameters() if p.grad is not None}
    assert trained_parts == {part for part, mode in modes.items() if mode != "frozen"}
    model.zero_grad(set_to_none=True)

    trainer.train()
    after = dict(model.named_parameters())
    for param_name, old in before.items():
        if after[param_name].requires_grad:
            continue
        assert torch.equal(after[param_name], old), f"frozen {param_name} changed"
    for part, mode in modes.items():
        if mode != "frozen":
            changed = [not torch.equal(after[n], before[n]) for n in before
                       if after[n].requires_grad and part_of(n, family) == part]
            assert changed and any(changed), part

    # the rates the optimizer holds, read back from it: one group per part (and decay kind)
    held = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        assert {part_of(names[id(p)], family) for p in group["params"]} == {group["part"]}
        held.setdefault(group["part"], set()).add(group["lr"])
        if group["weight_decay"] == 0.0 and trainer.args.weight_decay:
            assert all(".bias" in names[id(p)] or "norm" in names[id(p)] for p in group["params"])
    expected = {part: {part_rates.get(part, 1e-3)} for part, mode in modes.items() if mode != "frozen"}
    assert held == expected


def test_norms_and_biases_get_no_weight_decay(tmp_path):
    trainer, _, _ = _setup("demo", {"recipe": "merger-full"}, tmp_path, weight_decay=0.1)
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decays = {names[id(p)]: g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decays["base_model.model.model.visual.merger.modules_to_save.default.ln_q.weight"] == 0.0
    assert decays["base_model.model.model.visual.merger.modules_to_save.default.mlp.0.bias"] == 0.0
    assert decays["base_model.model.model.visual.merger.modules_to_save.default.mlp.0.weight"] == 0.1


@pytest.mark.parametrize("name", DEMOS)
def test_resume_restores_every_groups_optimizer_state(name, tmp_path):
    lora = {"vision": "lora", "merger": "full", "merger_lr": 2e-3}
    trainer, _, _ = _setup(name, lora, tmp_path / "run", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    resumed, _, _ = _setup(name, lora, tmp_path / "run", steps=3, save_steps=0)
    seen = {}

    class Snapshot(__import__("transformers").TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # after the resume loaded
            import copy

            seen["state"] = copy.deepcopy(optimizer.state_dict())

    resumed.add_callback(Snapshot())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    state = seen["state"]
    assert [(g["part"], g["lr"]) for g in state["param_groups"]] == \
        [(g["part"], g["lr"]) for g in saved["param_groups"]]
    assert {g["part"] for g in state["param_groups"]} == {"vision", "merger", "language"}
    assert len(state["state"]) == sum(len(g["params"]) for g in saved["param_groups"]) > 0
    for index, moments in saved["state"].items():
        assert torch.equal(state["state"][index]["exp_avg"], moments["exp_avg"])
        assert torch.equal(state["state"][index]["exp_avg_sq"], moments["exp_avg_sq"])


@pytest.mark.parametrize("name", DEMOS)
def test_adapter_loads_in_plain_peft_with_the_trained_logits(name, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open

    from workbench.training.loading import load_model

    trainer, _, family = _setup(name, {"vision": "lora", "merger": "full", "merger_lr": 1e-2}, tmp_path / "run")
    trainer.train()
    model = trainer.model.eval()
    model.save_pretrained(tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert any(".visual.blocks." in k and "lora_A" in k for k in keys)
    assert any(".visual.merger." in k and "lora_" not in k for k in keys)
    assert any(".language_model." in k and "lora_B" in k for k in keys)
    from workbench.demo import ensure_demo

    base = load_model(str(ensure_demo(name=name).model), RunConfig.from_dict({"model": {"name_or_path": name}}))
    plain = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("labels", None)
    with torch.no_grad():
        expected, got = model(**batch).logits, plain(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    with plain.disable_adapter(), torch.no_grad():
        assert not torch.allclose(plain(**batch).logits, expected, atol=1e-3)  # the adapter matters


def test_job_says_what_trains_and_run_yaml_keeps_it(tmp_path):
    """`train --model demo --vision lora --merger full --merger-lr 1e-3`, as the job runs it."""
    from peft import PeftModel

    from workbench.demo import ensure_demo
    from workbench.training import JobState, TrainingJob
    from workbench.training.loading import load_model

    config = RunConfig.from_dict(__import__("workbench.demo", fromlist=["DEMO_TRAINING"]).DEMO_TRAINING).replace(
        lora={"vision": "lora", "merger": "full", "merger_lr": 1e-3},
        training={"max_steps": 2, "save_steps": 0, "output_dir": str(tmp_path / "run")})
    lines = []
    job = TrainingJob(config, on_message=lines.append)
    assert job.run() == JobState.FINISHED, job.message
    start = next(line for line in lines if "parameters trainable" in line)
    assert "merger full 24,832 at 0.001" in start  # ln_q 2x32 + mlp.0 128x128+128 + mlp.2 128x64+64
    assert "vision tower LoRA" in start and "language model LoRA" in start and "at 0.003" in start
    text = (tmp_path / "run" / "run.yaml").read_text()
    assert "# trains: " in text and RunConfig.load(tmp_path / "run" / "run.yaml").lora.merger == "full"
    base = load_model(str(ensure_demo().model), RunConfig())
    plain = PeftModel.from_pretrained(base, tmp_path / "run")
    assert plain.peft_config["default"].modules_to_save == ["visual.merger"]


def test_export_says_vllm_skips_the_tower_and_the_merge_carries_every_part(tmp_path):
    """A demo run with vision LoRA and a fully trained merger: the adapter export recommends the merge,
    and the merged model's logits are the adapter's."""
    from peft import PeftModel

    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.export import VISION_NOTE, export, plan_export
    from workbench.models.families import QWEN2_VL
    from workbench.training import JobState, TrainingJob
    from workbench.training.loading import load_model

    run = tmp_path / "run"
    config = RunConfig.from_dict(DEMO_TRAINING).replace(
        lora={"recipe": "vision-lora", "merger": "full", "merger_lr": 1e-2},
        training={"max_steps": 2, "save_steps": 0, "output_dir": str(run)})
    assert TrainingJob(config).run() == JobState.FINISHED
    assert VISION_NOTE in plan_export(run, tmp_path / "adapter").summary()
    assert VISION_NOTE not in plan_export(run, tmp_path / "merged", merge=True).summary()
    from workbench.ui import export_tab

    assert "vLLM applies LoRA to the language model only" in export_tab.check(str(run), "adapter", "auto", "",
                                                                              str(tmp_path / "tab"))
    merged_dir = export(run, tmp_path / "merged", merge=True, dtype="fp32")

    trainer, _, _ = _setup("demo", {}, tmp_path / "batch")  # only for a real collated batch
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("labels", None)
    base = load_model(str(ensure_demo().model), RunConfig())
    adapter = PeftModel.from_pretrained(base, run).eval()
    merged = QWEN2_VL.transformers_class("model_class").from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected, got = adapter(**batch).logits, merged(**batch).logits
        with adapter.disable_adapter():
            untrained = adapter(**batch).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(untrained, expected, atol=1e-3)


def test_a_language_only_adapter_has_no_vllm_note(tmp_path):
    from workbench.demo import DEMO_TRAINING
    from workbench.export import VISION_NOTE, plan_export
    from workbench.training import JobState, TrainingJob

    config = RunConfig.from_dict(DEMO_TRAINING).replace(
        lora={"recipe": "language-lora"}, training={"max_steps": 1, "save_steps": 0, "output_dir": str(tmp_path / "run")})
    assert TrainingJob(config).run() == JobState.FINISHED
    assert VISION_NOTE not in plan_export(tmp_path / "run", tmp_path / "adapter").summary()


@pytest.mark.slow  # about 50 s: two launches of 2 processes
def test_ddp_and_fsdp2_train_vision_lora_and_a_full_merger_alike(tmp_path):
    """`train --vision lora --merger full --merger-lr 1e-3 --strategy ddp|fsdp --nproc 2`: 2 CPU processes
    each; the two adapters hold the same tensors (FSDP2 gathers the wrapped merger copy whole)."""
    from safetensors.torch import load_file

    from tests.conftest import run_cli

    adapters = []
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        done = run_cli("train", "--model", "demo", "--vision", "lora", "--merger", "full", "--merger-lr", "1e-3",
                       "--strategy", strategy, "--nproc", 2, "--max-steps", 2, "--save-steps", 0, "--output-dir", out)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "merger full 24,832 at 0.001" in done.stderr
        adapters.append(load_file(out / "adapter_model.safetensors"))
    ddp, fsdp = adapters
    assert set(ddp) == set(fsdp) and any(".visual.merger.mlp.0.weight" in k for k in ddp)
    assert all(torch.allclose(ddp[k].float(), fsdp[k].float(), atol=1e-6) for k in ddp)


def test_a_fully_trained_part_trains_in_fp32_on_a_bf16_base():
    """The trained copy is fp32 (a bf16 weight would round a 1e-5 Adam step away); the base stays bf16."""
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.demo import ensure_demo

    config = RunConfig.from_dict({"model": {"dtype": "bf16"}, "lora": {"recipe": "merger-only"}})
    model = apply_lora(load_model(str(ensure_demo().model), config), config.lora, False)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32} and frozen == {torch.bfloat16}


def test_qlora_keeps_the_vision_tower_unquantised_under_vision_lora():
    from workbench.demo import ensure_demo
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora

    config = RunConfig.from_dict({"model": {"quantization": "nf4"}, "lora": {"recipe": "vision-lora"}})
    model = apply_lora(load_model(str(ensure_demo().model), config), config.lora, False)
    core = model.base_model.model.model
    assert type(core.visual.blocks[0].attn.qkv).__module__ == "peft.tuners.lora.layer"  # plain LoRA, bf16/fp32 base
    assert type(core.language_model.layers[0].mlp.down_proj).__module__.startswith("peft.tuners.lora.bnb")


def test_launch_takes_the_same_flags(tmp_path):
    from workbench.cli.launch import config_for, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["launch", "--out", str(tmp_path / "run"), "--strategy", "ddp", "--nproc-per-node", "2",
                              "--recipe", "merger-full", "--vision", "lora",
                              "--vision-lr", "2e-5"])
    lora = config_for(args).lora
    assert lora.parts() == {"vision": "lora", "merger": "full", "language": "lora"} and lora.vision_lr == 2e-5
