"""Memory planner tab: handlers as plain functions, and the tab builds inside Blocks."""

import gradio as gr

from workbench.settings import RunConfig
from workbench.ui import planner_tab

ARGS = ("qwen2-vl-72b-instruct", "4x40GiB", "bf16", 8, "language-all-linear", 1, 2048, 1003520, 3136, 1, True)


def test_on_plan_outputs():
    text, bars, table, dmap, auto, sugg, state = planner_tab.on_plan(*ARGS)
    assert "Fits" in text
    assert set(bars["GPU"]) == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    # Each bar stacks up to at least the GPU's capacity (terms + free).
    assert all(abs(g["GiB"].sum() - 40) < 1e-6 for _, g in bars.groupby("GPU"))
    assert list(table["GPU"]) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert dmap.iloc[-1]["modules"].endswith("lm_head")
    assert "device_map" in auto and state["fits"] and state["device_map"]["lm_head"] == 3


def test_plan_state_gives_the_training_tab_its_reference_lines():
    from workbench.training.series import predicted_peaks

    *_, state = planner_tab.on_plan(*ARGS)
    peaks = predicted_peaks(state)
    assert sorted(peaks) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(30 * 2**30 < v <= 40 * 2**30 for v in peaks.values())


def test_on_plan_bad_input_is_a_message():
    text, *_, state = planner_tab.on_plan(*(ARGS[:1] + ("4x0GiB",) + ARGS[2:]))
    assert text.startswith("**Cannot plan:**") and state is None


def test_use_plan_writes_settings():
    *_, state = planner_tab.on_plan(*ARGS[:6] + (2000, 501760) + ARGS[8:])
    config = RunConfig().to_dict()
    new, message = planner_tab.use_plan(state, config)
    assert new["model"]["device_map"]["lm_head"] == 3
    assert (new["data"]["max_length"], new["data"]["max_pixels"]) == (2000, 501760)
    assert config["data"]["max_length"] == 2048  # the old dict is untouched
    RunConfig.from_dict(new)
    assert message.startswith("Applied")


def test_use_plan_refuses_a_plan_that_does_not_fit():
    *_, state = planner_tab.on_plan(*(ARGS[:1] + ("2x40GiB",) + ARGS[2:]))
    config = RunConfig().to_dict()
    new, message = planner_tab.use_plan(state, config)
    assert new is config and "does not fit" in message


def test_form_from_config_round_trip():
    values = planner_tab.form_from_config(RunConfig().to_dict())
    assert values[1] == "bf16" and values[5] == 2048


def test_tab_builds():
    from workbench.session import Workbench
    from workbench.ui.app import LaunchOptions, TabContext

    with gr.Blocks() as demo:
        ctx = TabContext(options=LaunchOptions(), session=Workbench(), config=gr.State(RunConfig().to_dict()))
        with gr.Tab("Memory planner"):
            built = planner_tab.build(ctx)
    assert built["plan"] is not None and built["applied"] is not None and demo is not None
