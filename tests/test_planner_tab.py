"""Memory planner tab: handlers as plain functions, and the tab builds inside Blocks."""

import gradio as gr
import pytest

from workbench.planner import request_defaults
from workbench.settings import RunConfig
from workbench.ui import planner_tab

ARGS = ("qwen2-vl-72b-instruct", "4x40GiB", "bf16", 8, "language-all-linear", 1, 2048, 1003520, 3136, 1, True)


def demo_config() -> dict:
    from workbench.demo import DEMO_TRAINING

    return RunConfig.from_dict(DEMO_TRAINING).to_dict()


def build_tab(config: dict):
    from workbench.session import Workbench
    from workbench.ui.app import LaunchOptions, TabContext

    with gr.Blocks() as demo:
        ctx = TabContext(options=LaunchOptions(), session=Workbench(), config=gr.State(config))
        with gr.Tab("Memory planner"):
            tab = planner_tab.build(ctx)
    return demo, ctx, tab


def test_on_plan_outputs():
    text, strategies, bars, table, dmap, auto, sugg, state = planner_tab.on_plan(*ARGS)
    assert "Fits" in text and text.startswith("### device_map over 4 GPUs")
    assert [s.removeprefix("> ") for s in strategies["strategy"]] == ["device_map", "ddp", "fsdp"]
    assert strategies["strategy"][0] == "> device_map" and list(strategies["fits"]) == ["yes", "no", "no"]
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


def test_choosing_a_row_redraws_the_chart_for_that_strategy():
    *_, state = planner_tab.on_plan(*ARGS, "auto", 2)  # 2 nodes of 4 x 40 GiB: fsdp fits and is chosen
    assert state["strategy"] == "fsdp" and state["device_map"] is None
    strategies, bars, table, dmap, note, new = planner_tab.on_select(state, 0)
    assert new["strategy"] == "device_map" and new["device_map"]["lm_head"] == 3
    assert strategies["strategy"][0] == "> device_map" and "device_map" in note
    assert bars.loc[bars["term"] == "gathered/buckets", "GiB"].eq(0).all() and len(dmap) == 4
    fsdp = planner_tab.on_select(new, 2)
    assert fsdp[-1]["strategy"] == "fsdp" and fsdp[1].loc[fsdp[1]["term"] == "gathered/buckets", "GiB"].gt(1).all()
    assert fsdp[-1]["devices"] == state["devices"]  # the Training tab's predicted peaks follow the row
    assert planner_tab.on_select(None, 0)[-1] is None


# ---- issue 25 walk: the form's settings are the run's (issue 10 item 4 had the planner's defaults, and
# "Use this plan" then replaced the demo's tuned settings with them) ----------------------------------
def test_tab_starts_from_the_run_config_settings():
    d = request_defaults()
    _, _, tab = build_tab(demo_config())  # the demo trains at rank 16, batch 8, checkpointing off
    values = {name: component.value for name, component in tab["inputs"].items()}
    assert values["model"] == "demo"
    assert (values["rank"], values["batch"], values["checkpointing"]) == (16, 8, False)
    assert (values["max_length"], values["max_pixels"], values["min_pixels"]) == (256, 112 * 112, 3136)
    assert values["targets"] == "language-and-merger"
    # placement is the plan's to choose; what the run config does not hold starts from the CLI's defaults
    assert (values["strategy"], values["nodes"], values["images"]) == ("auto", 1, d["images_per_sample"])


def test_only_model_and_gpus_typed_plans_as_the_cli_does():
    from workbench.cli.main import build_parser
    from workbench.planner import PlanRequest

    _, _, tab = build_tab(RunConfig().to_dict())  # the default settings are the CLI's
    form = {name: c.value for name, c in tab["inputs"].items()}
    form.update(model="qwen2-vl-72b-instruct", gpus="4x40GiB")
    text, *_, state = planner_tab.on_plan(*form.values())
    args = build_parser().parse_args(["plan", "--model", "qwen2-vl-72b-instruct", "--gpus", "4x40GiB"])
    cli = {k: getattr(args, k) for k in ("lora_rank", "batch_size", "max_length", "max_pixels", "strategy", "nodes")}
    assert cli == {k: getattr(PlanRequest, k) for k in cli}
    assert state["request"]["lora_rank"] == cli["lora_rank"] and state["request"]["batch_size"] == cli["batch_size"]
    assert "Fits" in text


def test_fill_from_current_settings_stays_explicit():
    values = planner_tab.form_from_config(demo_config())
    assert values[0] == "demo" and values[2] == 16 and values[4] == 8 and values[8] is False
    assert values[9:] == ("device_map", 1, "none", 0, True, "", "", "", "", None, 0)  # recipe, parts, video (no frame count in a run config; its max pixels 0: the default)


# ---- issue 10 item 5: say what does not fit; show the suggestions' numbers -----------------------
def test_does_not_fit_names_what_does_not_fit():
    text, *_ = planner_tab.on_plan(*(ARGS[:1] + ("2x24GiB",) + ARGS[2:]))
    assert "**Does not fit:**" in text
    assert "layers.22-79, norm, lm_head fit on none of the 2 GPUs" in text
    # not the old self-contradiction "Does not fit: peak 22.93 GiB of 24.00 GiB"
    assert "Does not fit:** peak" not in text


def test_suggestion_numbers_come_before_the_long_change_text():
    *_, sugg, state = planner_tab.on_plan(*(ARGS[:1] + ("3x40GiB",) + ARGS[2:]))
    assert list(sugg.columns) == ["fits", "saves GiB", "peak GPU GiB", "change"]
    assert len(sugg) >= 2 and set(sugg["fits"]) <= {"yes", "no"}


# ---- issue 10 item 3: a plan carries its model and settings --------------------------------------
def test_use_plan_sets_the_model_and_the_settings_it_was_made_with():
    *_, state = planner_tab.on_plan(*ARGS[:2], "bf16", 16, "language-attention", 1, 2000, 501760, 3136, 1, True)
    config = demo_config()  # model 'demo', rank 16 on language-and-merger, batch 8, checkpointing off
    new, message = planner_tab.use_plan(state, config)
    assert new["model"]["name_or_path"] == "qwen2-vl-72b-instruct" and new["model"]["dtype"] == "bf16"
    assert new["model"]["device_map"]["lm_head"] == 3
    assert (new["lora"]["rank"], new["lora"]["target_modules"]) == (16, "language-attention")
    assert new["training"]["per_device_train_batch_size"] == 1 and new["training"]["gradient_checkpointing"] is True
    assert (new["data"]["max_length"], new["data"]["max_pixels"]) == (2000, 501760)
    assert (new["training"]["strategy"], new["training"]["nodes"], new["training"]["nproc_per_node"]) == \
        ("device_map", 1, 0)
    assert config["model"]["name_or_path"] == "demo"  # the old dict is untouched
    RunConfig.from_dict(new)
    assert message.startswith("Applied: qwen2-vl-72b-instruct, device_map over 4 GPU(s)")


def test_use_plan_carries_strategy_and_nodes():
    *_, state = planner_tab.on_plan(*ARGS, "auto", 2)
    new, message = planner_tab.use_plan(state, RunConfig().to_dict())
    assert (new["training"]["strategy"], new["training"]["nodes"], new["training"]["nproc_per_node"]) == ("fsdp", 2, 4)
    assert new["model"]["device_map"] is None and "fsdp over 2 node(s) x 4 GPU(s)" in message
    # Choosing the device_map row applies device_map, on one node.
    device_map = planner_tab.on_select(state, 0)[-1]
    new, _ = planner_tab.use_plan(device_map, RunConfig().to_dict())
    assert (new["training"]["strategy"], new["training"]["nodes"]) == ("device_map", 1)
    assert new["model"]["device_map"]["lm_head"] == 3


def test_use_plan_refuses_a_plan_that_does_not_fit():
    *_, state = planner_tab.on_plan(*(ARGS[:1] + ("2x40GiB",) + ARGS[2:]))
    config = RunConfig().to_dict()
    new, message = planner_tab.use_plan(state, config)
    assert new is config and "does not fit" in message
    two_nodes = planner_tab.on_plan(*ARGS, "auto", 2)[-1]
    ddp = planner_tab.on_select(two_nodes, 1)[-1]  # ddp: the whole 72B model on every GPU
    new, message = planner_tab.use_plan(ddp, config)
    assert new is config and "does not fit with ddp" in message


@pytest.mark.parametrize("targets", [r".*\.q_proj"])
def test_use_plan_says_why_not_when_the_config_cannot_hold_the_plan(targets):
    *_, state = planner_tab.on_plan(*ARGS[:4], targets, *ARGS[5:])
    config = RunConfig().to_dict()
    new, message = planner_tab.use_plan(state, config)
    assert new is config and message.startswith("Not applied: lora.target_modules")


def test_a_qlora_plan_shows_its_dequantised_weights_and_use_this_plan_sets_nf4():
    """The planner's 4-bit suggestion is a setting: plan with nf4, then "Use this plan" trains with it."""
    *_, sugg, full = planner_tab.on_plan(*(ARGS[:1] + ("2x40GiB",) + ARGS[2:]), "device_map")
    assert not full["fits"] and any("4-bit" in change for change in sugg["change"])
    text, _, bars, table, *_, state = planner_tab.on_plan(*(ARGS[:1] + ("2x40GiB",) + ARGS[2:]), "device_map", 1,
                                                           None, None, "nf4", 32, True)
    assert state["fits"] and "nf4 base" in text and "loss on 32 trained tokens per row" in text
    assert "dequantised" in set(bars["term"]) and "dequantised" in table.columns
    new, message = planner_tab.use_plan(state, RunConfig().to_dict())
    assert new["model"]["quantization"] == "nf4" and new["data"]["trained_tokens"] == 32
    assert new["training"]["loss_on_trained_tokens_only"] is True and "nf4 base" in message
    RunConfig.from_dict(new)


def test_use_plan_without_a_plan():
    config = RunConfig().to_dict()
    assert planner_tab.use_plan(None, config) == (config, "Make a plan first.")


def test_tab_builds_and_exposes_its_events():
    demo, ctx, tab = build_tab(RunConfig().to_dict())
    assert isinstance(tab["plan"], gr.State) and demo is not None
    assert hasattr(tab["applied"], "then")  # the app chains the LoRA form's refill on it
    assert tab["suggestions"].wrap and tab["strategies"].wrap


def test_every_plan_draws_the_same_terms_in_the_same_order():
    """Seen in the browser: after a device_map plan, a two-node fsdp plan drew no gathered/buckets
    bar (4.09 GiB) though its table listed it. Gradio's plot keeps the colour domain of the first
    frame it drew, so every frame carries every term; weights stack at the bottom, free on top."""
    one_node = planner_tab.on_plan(*ARGS)[2]
    two_nodes = planner_tab.on_plan(*ARGS, "auto", 2)[2]
    order = ["free", "CUDA+alloc", "gathered/buckets", "dequantised", "logits/loss", "activations", "LoRA+optim",
             "weights"]
    for frame in (one_node, two_nodes):
        assert list(dict.fromkeys(frame["term"])) == order
    assert two_nodes.loc[two_nodes["term"] == "gathered/buckets", "GiB"].gt(1).all()


@pytest.mark.parametrize("field, index, words", [("rank", 3, "LoRA rank must be at least 1, got 0"),
                                                 ("batch", 5, "Batch size must be at least 1, got 0"),
                                                 ("images", 9, "Images per sample must be at least 0, got -1")])
def test_numbers_below_their_minimum_are_a_sentence_not_an_error_badge(field, index, words):
    """Seen in the browser: LoRA rank 0 got Gradio's "Value 0 is less than minimum value 1." toast and a
    bare "Error" over the old verdict (Gradio's minimum check runs before on_plan)."""
    _, _, tab = build_tab(demo_config())
    value = -1 if field == "images" else 0
    assert tab["inputs"][field].preprocess(value) == value
    args = list(ARGS)
    args[index] = value
    text, *_, state = planner_tab.on_plan(*args)
    assert text == f"**Cannot plan:** {words}." and state is None
