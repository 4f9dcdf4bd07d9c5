"""Issue 25's walk: "Use this plan" on a machine without a GPU plans for that machine (its CPU and
memory, not an example 4x40GiB) and keeps the run's own settings (the demo's rank 16, batch 8,
max_length 256, 12544 pixels) where the plan does not change them."""

import os

import pytest

from test_planner_tab import build_tab, demo_config
from workbench import devices
from workbench.settings import RunConfig
from workbench.ui import planner_tab


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(devices, "_nvml_state", {"module": None})


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_use_this_plan_on_a_cpu_machine_keeps_the_demo_settings(no_gpu):
    config = demo_config()
    _, _, tab = build_tab(config)
    form = {name: component.value for name, component in tab["inputs"].items()}
    assert form["gpus"] == "cpu"
    text, strategies, *_, state = planner_tab.on_plan(*form.values())
    assert "Fits" in text and "CPU" in text
    assert list(strategies["strategy"]) == ["> device_map"]  # one process: nothing to replicate or shard
    assert [d["device"] for d in state["devices"]] == ["cpu"]
    assert abs(state["devices"][0]["capacity_bytes"] - host_memory()) < 64 * 1024**2
    new, message = planner_tab.use_plan(state, config)
    changed = {(section, key) for section in config for key in config[section]
               if new[section][key] != config[section][key]}
    assert changed <= {("training", "strategy"), ("training", "nodes"), ("training", "nproc_per_node"),
                       ("model", "device_map")}, changed
    assert (new["lora"]["rank"], new["training"]["per_device_train_batch_size"]) == (16, 8)
    assert (new["data"]["max_length"], new["data"]["max_pixels"]) == (256, 12544)
    assert new["training"]["strategy"] == "device_map" and new["training"]["nproc_per_node"] == 0
    assert new["model"]["device_map"] is None  # training's own {"": "cpu"}: no GPU index
    assert message.startswith("Applied:") and "CPU" in message
    RunConfig.from_dict(new)


def test_the_form_follows_the_run_config():
    changed = RunConfig().replace(lora={"rank": 32}, data={"max_length": 777}).to_dict()
    values = dict(zip(planner_tab.FOLLOWED, planner_tab.follow(changed)))
    assert (values["rank"], values["max_length"]) == (32, 777)
    assert "strategy" not in values  # the plan chooses the placement
    import gradio as gr

    if "video_frames" not in changed["data"]:  # fields the run config does not hold stay as typed
        assert isinstance(values["video_frames"], type(gr.skip()))


def test_cli_plans_this_machine_without_gpus(no_gpu, capsys):
    import json

    from workbench.cli.main import main

    assert main(["plan", "--model", "demo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["strategy"] == "device_map" and [d["device"] for d in data["devices"]] == ["cpu"]
    assert set(data["device_map"].values()) == {"cpu"}
    # the CUDA context is no part of a CPU process
    assert data["devices"][0]["overhead_bytes"] < 512 * 1024**2


def test_a_cpu_plan_is_one_process():
    from workbench.errors import UserError
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory

    with pytest.raises(UserError, match="cpu alone, with nodes 1"):
        plan_memory(PlanRequest(model="demo", gpus=parse_gpu_spec("cpu"), nodes=2))


def test_to_plan_request_and_with_plan_round_trip():
    # One table maps the run's settings to the plan's request and back: a plan made from a config and
    # applied to it changes only what the plan chose (strategy, nodes, processes, the map).
    from workbench.hardware import parse_gpu_spec
    from workbench.planner.request import CONFIG_FIELDS, NOT_WRITTEN_BACK, to_plan_request, with_plan
    from workbench.settings import RunConfig

    config = RunConfig().replace(model={"name_or_path": "qwen2-vl-7b-instruct", "quantization": "nf4"},
                                 lora={"rank": 32, "dropout": 0.0, "recipe": "merger-full"},
                                 data={"max_length": 4096, "max_pixels": 401408, "trained_tokens": 77},
                                 training={"per_device_train_batch_size": 2, "gradient_checkpointing": False})
    request = to_plan_request(config, parse_gpu_spec("4x80GiB"))
    for section, name, field in CONFIG_FIELDS:
        if hasattr(getattr(config, section), name):
            assert getattr(request, field) == getattr(getattr(config, section), name), name
    back = with_plan(config, request.fields(), "ddp")
    changed = {(s, k) for s in ("model", "data", "lora", "training")
               for k, v in getattr(back, s).__dict__.items() if getattr(getattr(config, s), k) != v}
    assert changed == {("training", "strategy"), ("training", "nproc_per_node")}
    assert back.training.nproc_per_node == 4
    # the other way: a default config takes every setting the plan was made with, but not its dropout
    fresh = with_plan(RunConfig(), request.fields(), "fsdp")
    again = to_plan_request(fresh, parse_gpu_spec("4x80GiB"))
    for section, name, field in CONFIG_FIELDS:
        if field not in NOT_WRITTEN_BACK and hasattr(getattr(config, section), name):
            assert getattr(again, field) == getattr(request, field), name
    assert fresh.lora.dropout == RunConfig().lora.dropout and fresh.training.strategy == "fsdp"
