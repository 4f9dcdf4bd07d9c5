"""The planner counts what trains (issue 22): a fully trained part costs 16 bytes per parameter (an fp32
copy, its gradient, AdamW's two moments), a trained vision tower stores its activations."""

import pytest

from workbench.errors import UserError


def _plan(**parts):
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory

    request = PlanRequest(model="qwen2-vl-7b-instruct", gpus=parse_gpu_spec("1x80GiB"), strategy="device_map", **parts)
    return plan_memory(request).devices[0]


def _numel(prefix_filter):
    from workbench.models import build_meta_model, load_model_config

    model = build_meta_model(load_model_config("qwen2-vl-7b-instruct"))
    return sum(p.numel() for name, p in model.named_parameters() if prefix_filter(name))


def test_a_fully_trained_part_costs_16_bytes_per_parameter():
    base = _plan()
    merger = _plan(merger="full")
    merger_numel = _numel(lambda n: n.startswith("model.visual.merger."))
    assert merger_numel > 40_000_000  # 2 linears 5120x5120 and 5120x3584 with biases, and a LayerNorm
    assert merger["lora_bytes"] - base["lora_bytes"] == 16 * merger_numel
    vision = _plan(vision="full")
    tower_numel = _numel(lambda n: n.startswith("model.visual.") and ".merger." not in n)
    assert vision["lora_bytes"] - base["lora_bytes"] == 16 * tower_numel
    assert vision["activation_bytes"] > base["activation_bytes"]  # the tower's activations are stored now
    assert vision["total_bytes"] > merger["total_bytes"] > base["total_bytes"]


def test_vision_lora_adds_the_towers_lora_and_its_activations():
    base, vision = _plan(), _plan(vision="lora")
    assert 0 < vision["lora_bytes"] - base["lora_bytes"] < 16 * 50_000_000
    assert vision["activation_bytes"] > base["activation_bytes"]


def test_plan_cli_takes_the_training_flags(tmp_path):
    from tests.conftest import run_cli

    import json

    done = run_cli("plan", "--model", "qwen2-vl-7b-instruct", "--gpus", "1x80GiB", "--strategy", "device_map",
                   "--json", "--recipe", "merger-only", "--merger-lr", "1e-3")
    assert done.returncode == 0, done.stderr
    device = json.loads(done.stdout.strip().splitlines()[-1])["devices"][0]
    assert device["lora_bytes"] == _plan(recipe="merger-only")["lora_bytes"]
    bad = run_cli("plan", "--model", "qwen2-vl-7b-instruct", "--gpus", "1x80GiB", "--recipe", "merger-only",
                  "--merger", "frozen")
    assert bad.returncode == 2 and "nothing would train" in bad.stderr and "--recipe" in bad.stderr


def test_quantised_language_model_cannot_train_in_full():
    from workbench.settings import RunConfig

    with pytest.raises(UserError, match=r"lora\.language"):
        RunConfig.from_dict({"model": {"quantization": "nf4"}, "lora": {"language": "full"}})


def test_planner_tab_shows_what_each_choice_costs_and_applies_it():
    from workbench.ui import planner_tab

    form = planner_tab.form_defaults("qwen2-vl-7b-instruct")
    form.update(gpus="1x80GiB", strategy="device_map")
    *_, base = planner_tab.on_plan(**form)
    *_, merger = planner_tab.on_plan(**{**form, "merger": "full"})
    lora_bytes = [state["devices"][0]["lora_bytes"] for state in (base, merger)]
    assert lora_bytes[1] - lora_bytes[0] == _plan(merger="full")["lora_bytes"] - _plan()["lora_bytes"]
    from workbench.demo import DEMO_TRAINING
    from workbench.settings import RunConfig

    config, message = planner_tab.use_plan(merger, RunConfig.from_dict(DEMO_TRAINING).to_dict())
    assert config["lora"]["merger"] == "full", message
    assert RunConfig.from_dict(config).lora.parts()["merger"] == "full"
