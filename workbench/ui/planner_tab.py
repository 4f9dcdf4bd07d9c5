"""The Memory planner tab: the plan's inputs as a form, per-GPU bars, verdict, map, suggestions.

Handlers are plain functions of plain values (testable without a browser); every number
comes from ``workbench.planner.plan_memory``.
"""

from __future__ import annotations

import copy

import gradio as gr
import pandas as pd

from workbench.errors import UserError
from workbench.planner.report import GIB, TERM_LABELS, TERMS, map_ranges, verdict
from workbench.settings import TARGET_PRESETS

DTYPES = ["bf16", "fp16", "fp32"]
FALLBACK_GPUS = "4x40GiB"


def default_gpu_spec() -> str:
    """The detected GPUs as a spec, or an example spec on a machine without GPUs."""
    from workbench.hardware import detect_gpus, gpu_spec

    gpus = detect_gpus()
    return gpu_spec(gpus) if gpus else FALLBACK_GPUS


def form_from_config(config: dict) -> tuple:
    """(model, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, checkpointing) from a RunConfig dict."""
    m, d, l, t = config["model"], config["data"], config["lora"], config["training"]
    targets = l["target_modules"] if isinstance(l["target_modules"], str) else ",".join(l["target_modules"])
    dtype = m["dtype"] if m["dtype"] in DTYPES else "bf16"
    return (m["name_or_path"], dtype, l["rank"], targets, t["per_device_train_batch_size"], d["max_length"],
            d["max_pixels"], d["min_pixels"], t["gradient_checkpointing"])


def _int(name: str, value) -> int:
    if value is None or value == "":
        raise UserError(f"{name} is empty: enter a whole number.")
    if float(value) != int(value):
        raise UserError(f"{name} must be a whole number, got {value}.")
    return int(value)


def make_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images, checkpointing):
    from workbench.cli.plan import parse_targets
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory

    request = PlanRequest(
        model=str(model or "").strip(), gpus=parse_gpu_spec(gpus), dtype=dtype, lora_rank=_int("LoRA rank", rank),
        lora_targets=parse_targets(str(targets or "language-all-linear")), batch_size=_int("Batch size", batch),
        max_length=_int("Max length", max_length), max_pixels=_int("Max pixels", max_pixels),
        min_pixels=_int("Min pixels", min_pixels), images_per_sample=_int("Images per sample", images),
        gradient_checkpointing=bool(checkpointing))
    return plan_memory(request)


def bars(plan) -> pd.DataFrame:
    """Long table for a stacked bar per GPU: one row per (GPU, term), GiB; 'free' tops up to capacity."""
    rows = []
    for d in plan.devices:
        for term in TERMS:
            rows.append({"GPU": d["device"], "term": TERM_LABELS[term], "GiB": d[term] / GIB})
        rows.append({"GPU": d["device"], "term": "free", "GiB": max(0, d["capacity_bytes"] - d["total_bytes"]) / GIB})
    return pd.DataFrame(rows)


def device_frame(devices: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"GPU": d["device"], "capacity": round(d["capacity_bytes"] / GIB, 2),
                          **{TERM_LABELS[t]: round(d[t] / GIB, 2) for t in TERMS},
                          "total": round(d["total_bytes"] / GIB, 2),
                          "free": round((d["capacity_bytes"] - d["total_bytes"]) / GIB, 2)} for d in devices])


def map_frame(device_map: dict) -> pd.DataFrame:
    return pd.DataFrame([{"device": dev, "modules": mods} for dev, mods in map_ranges(device_map)],
                        columns=["device", "modules"])


def suggestion_frame(suggestions: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"change": s["change"], "fits": "yes" if s["fits"] else "no",
                          "saves GiB": round(s["saves_bytes"] / GIB, 2), "peak GPU GiB": round(s["peak_bytes"] / GIB, 2)}
                         for s in suggestions], columns=["change", "fits", "saves GiB", "peak GPU GiB"])


def auto_text(auto: dict) -> str:
    per = ", ".join(f"{d['device']} {d['total_bytes'] / GIB:.1f} GiB" + (" (OOM)" if d["device"] in auto["out_of_memory"] else "")
                    for d in auto["devices"])
    return f"**accelerate `device_map=\"auto\"`:** {auto['summary']}  \n{per}"


def on_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images, checkpointing):
    """The Plan button: (verdict, bars, per-GPU table, map table, auto comparison, suggestions, plan state)."""
    try:
        plan = make_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images,
                         checkpointing)
    except UserError as exc:
        empty = pd.DataFrame()
        # no empty frame for the chart: Gradio 6.31 would keep its axes categorical for good
        return f"**Cannot plan:** {exc}", gr.skip(), empty, map_frame({}), "", suggestion_frame([]), None
    r = plan.request
    state = {"fits": plan.fits, "device_map": plan.device_map, "max_length": r.max_length,
             "max_pixels": r.max_pixels, "min_pixels": r.min_pixels, "model": r.model,
             "gradient_checkpointing": r.gradient_checkpointing,
             "devices": plan.devices}  # the Training tab draws each device's predicted peak
    text = ("### " + verdict(plan)).replace("FITS:", "Fits:").replace("DOES NOT FIT:", "Does not fit:")
    return (text, bars(plan), device_frame(plan.devices), map_frame(plan.device_map), auto_text(plan.accelerate_auto),
            suggestion_frame(plan.suggestions), state)


def use_plan(plan_state, config: dict):
    """'Use this plan': write device_map, max_length and pixels into the RunConfig dict."""
    from workbench.settings import RunConfig

    if not plan_state:
        return config, "Make a plan first."
    if not plan_state["fits"]:
        return config, "This plan does not fit: apply one of the suggestions, plan again, then use it."
    new = copy.deepcopy(config)
    new["model"]["device_map"] = dict(plan_state["device_map"])
    new["data"]["max_length"] = plan_state["max_length"]
    new["data"]["max_pixels"] = plan_state["max_pixels"]
    new["data"]["min_pixels"] = plan_state["min_pixels"]
    new["training"]["gradient_checkpointing"] = plan_state["gradient_checkpointing"]
    try:
        RunConfig.from_dict(new)
    except UserError as exc:
        return config, f"Not applied: {exc}"
    note = ""
    if str(new["model"]["name_or_path"]).strip() != plan_state["model"]:
        note = f" Note: the plan is for {plan_state['model']}, the settings name {new['model']['name_or_path']}."
    return new, (f"Applied: device_map over {len(set(map(str, plan_state['device_map'].values())))} GPU(s), "
                 f"max_length {plan_state['max_length']}, max_pixels {plan_state['max_pixels']}.{note}")


def build(state) -> dict:
    """Widgets of the Memory planner tab, inside an open ``gr.Tab``; wires its events.

    Returns {"plan": the plan state, "applied": the "Use this plan" event}."""
    config = state.config.value if state is not None and getattr(state, "config", None) is not None else None
    defaults = form_from_config(config) if config else ("qwen2-vl-7b-instruct", "bf16", 8, "language-all-linear",
                                                        1, 2048, 1003520, 3136, True)
    gr.Markdown("Per-GPU memory of one LoRA training step with `device_map` (one process, layers spread over "
                "the GPUs), the map itself, and what to change when it does not fit.")
    with gr.Row():
        model = gr.Textbox(defaults[0], label="Model", info="Preset (qwen2-vl-2b/7b/72b-instruct), 'demo' or a local folder.", elem_id="planner-model")
        gpus = gr.Textbox(default_gpu_spec(), label="GPUs", info="Detected, or a spec: 4x40GiB, 2x80GB, 40GiB,40GiB,24GiB.", elem_id="planner-gpus")
        dtype = gr.Dropdown(DTYPES, value=defaults[1], label="Weight dtype")
    with gr.Row():
        rank = gr.Number(defaults[2], precision=0, minimum=1, label="LoRA rank", elem_id="planner-rank")
        targets = gr.Dropdown(list(TARGET_PRESETS), value=defaults[3], allow_custom_value=True, label="LoRA targets")
        batch = gr.Number(defaults[4], precision=0, minimum=1, label="Batch size", elem_id="planner-batch")
        checkpointing = gr.Checkbox(defaults[8], label="Gradient checkpointing", elem_id="planner-checkpointing")
    with gr.Row():
        max_length = gr.Number(defaults[5], precision=0, minimum=1, label="Max length (text + visual tokens)", elem_id="planner-max-length")
        max_pixels = gr.Number(defaults[6], precision=0, minimum=1, label="Max pixels per image", elem_id="planner-max-pixels")
        min_pixels = gr.Number(defaults[7], precision=0, minimum=1, label="Min pixels per image")
        images = gr.Number(1, precision=0, minimum=0, label="Images per sample")
    with gr.Row():
        fill = gr.Button("Fill from current settings")
        plan_button = gr.Button("Plan", variant="primary")
    verdict_md = gr.Markdown()
    chart = gr.BarPlot(None, x="GPU", y="GiB", color="term", title="Memory per GPU at the step's peak (GiB)",
                       y_title="GiB", height=320)
    table = gr.Dataframe(label="Per GPU (GiB)", interactive=False)
    with gr.Row():
        device_map = gr.Dataframe(map_frame({}), label="Device map", interactive=False)
        suggestions = gr.Dataframe(suggestion_frame([]), label="To make it fit", interactive=False)
    auto_md = gr.Markdown()
    plan_state = gr.State(None)
    with gr.Row():
        use = gr.Button("Use this plan")
        use_status = gr.Markdown()

    inputs = [model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images, checkpointing]
    plan_button.click(on_plan, inputs, [verdict_md, chart, table, device_map, auto_md, suggestions, plan_state])
    fill.click(form_from_config, [state.config],
               [model, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, checkpointing])
    applied = use.click(use_plan, [plan_state, state.config], [state.config, use_status])
    return {"plan": plan_state, "applied": applied}
