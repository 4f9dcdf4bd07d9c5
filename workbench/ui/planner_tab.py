"""The Memory planner tab: the plan's inputs as a form, the strategies side by side, per-GPU bars,
verdict, map, suggestions, and "Use this plan".

Handlers are plain functions of plain values (testable without a browser); every number
comes from ``workbench.planner.plan_memory``. The form's settings follow the run config (the
LoRA form, a loaded dataset or YAML): a plan is of the run being set up, and "Use this plan"
changes only the placement and what was changed here. Fields the run config does not hold
(GPUs, images per sample, links) start from the planner's defaults (``PlanRequest``, the CLI's).
On a machine without a GPU the GPUs box says ``cpu``: the plan is for this machine.
"""

from __future__ import annotations


import gradio as gr
import pandas as pd

from workbench.errors import UserError
from workbench.planner.report import GIB, TERM_LABELS, TERMS, map_ranges, terms_of, verdict
from workbench.planner.request import DTYPE_NAMES, STRATEGIES, request_defaults, with_plan
from workbench.settings import PART_MODES, PARTS, RECIPES, TARGET_PRESETS

DTYPES = ["auto", "bf16", "fp16", "fp32"]  # auto: as training picks it (bf16 on GPUs, fp32 on the CPU)
# The form's fields in the order form_from_config gives them; FOLLOWED: those that follow the run config
# (strategy and nodes are the plan's to choose).
FILLED = ("model", "dtype", "rank", "targets", "batch", "max_length", "max_pixels", "min_pixels", "checkpointing",
          "strategy", "nodes", "quantization", "trained_tokens", "trained_only", "recipe", *PARTS, "video_frames",
          "video_max_pixels")
FOLLOWED = tuple(name for name in FILLED if name not in ("strategy", "nodes"))
STRATEGY_COLUMNS = ["strategy", "fits", "peak GPU GiB", "free GiB", "speed", "why"]
# Fixed colours per term, so switching strategies (whose terms differ) keeps each term's colour.
TERM_COLORS = {"weights": "#4c78a8", "LoRA+optim": "#f58518", "activations": "#e45756", "logits/loss": "#72b7b2",
               "dequantised": "#9d755d", "gathered/buckets": "#b279a2", "CUDA+alloc": "#54a24b", "free": "#eeca3b"}
QUANTIZATIONS = ["none", "nf4", "int8"]
# The run config fields a plan sets, and where in the plan they come from.
# What trains, as the LoRA tab offers it: empty defers to the recipe (or, without one, to the targets).
RECIPE_CHOICES = [("as the LoRA targets reach", ""), *RECIPES]
PART_CHOICES = [("as the recipe says", ""), *PART_MODES]


def default_gpu_spec() -> str:
    """The detected GPUs as a spec (cards by name where known), or 'cpu' on a machine without one."""
    from workbench.hardware import detect_gpus, gpu_spec, usable

    gpus = usable(detect_gpus())
    return gpu_spec(gpus) if gpus else "cpu"


def form_defaults(model: str) -> dict:
    """The form's starting values: ``model`` and the planner's defaults for the rest (the CLI's)."""
    d = request_defaults()
    targets = d["lora_targets"] if isinstance(d["lora_targets"], str) else ",".join(d["lora_targets"])
    return {"model": model, "dtype": d["dtype"], "rank": d["lora_rank"], "targets": targets,
            "batch": d["batch_size"], "max_length": d["max_length"], "max_pixels": d["max_pixels"],
            "min_pixels": d["min_pixels"], "images": d["images_per_sample"],
            "checkpointing": d["gradient_checkpointing"], "strategy": d["strategy"], "nodes": d["nodes"],
            "intra": d["intra_node_gbps"], "inter": d["inter_node_gbps"], "quantization": d["quantization"],
            "trained_tokens": d["trained_tokens"], "trained_only": d["loss_on_trained_tokens_only"],
            **{name: d[name] for name in ("recipe", *PARTS)},
            "video_frames": d["video_frames"], "video_max_pixels": d["video_max_pixels"]}


def form_from_config(config: dict) -> tuple:
    """(model, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, checkpointing, strategy, nodes,
    quantization, trained tokens, loss on trained tokens only, recipe, parts, video frames, video max pixels)
    from a RunConfig dict: the "Fill from current settings" button."""
    m, d, l, t = config["model"], config["data"], config["lora"], config["training"]
    targets = l["target_modules"] if isinstance(l["target_modules"], str) else ",".join(l["target_modules"])
    dtype = m["dtype"] if m["dtype"] in DTYPES else DTYPE_NAMES.get(m["dtype"], "bf16")
    return (m["name_or_path"], dtype, l["rank"], targets, t["per_device_train_batch_size"], d["max_length"],
            d["max_pixels"], d["min_pixels"], t["gradient_checkpointing"], t.get("strategy", "device_map"),
            t.get("nodes", 1), m.get("quantization", "none"), d.get("trained_tokens", 0),
            t.get("loss_on_trained_tokens_only", True), *(l.get(name, "") for name in ("recipe", *PARTS)),
            d.get("video_frames"), d.get("video_max_pixels"))


def followed(config: dict) -> dict:
    """The form's values of the run config's settings (FOLLOWED), leaving out those it does not hold."""
    values = dict(zip(FILLED, form_from_config(config)))
    return {name: values[name] for name in FOLLOWED if values[name] is not None}


def fill_from(config: dict):
    """"Fill from current settings": every field the run config holds, strategy and nodes too."""
    return tuple(gr.skip() if value is None else value for value in form_from_config(config))


def follow(config: dict):
    """The run config changed: its settings into the form (gr.skip() for what it does not hold)."""
    values = followed(config)
    return tuple(values.get(name, gr.skip()) for name in FOLLOWED)


def _int(name: str, value, minimum: int = 1) -> int:
    if value is None or value == "":
        raise UserError(f"{name} is empty: enter a whole number.")
    if float(value) != int(value):
        raise UserError(f"{name} must be a whole number, got {value}.")
    if int(value) < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {int(value)}.")
    return int(value)


def _gbps(name: str, value) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def make_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images, checkpointing,
              strategy="auto", nodes=1, intra=None, inter=None, quantization="none", trained_tokens=0,
              trained_only=True, recipe="", vision="", merger="", language="", video_frames=0, video_max_pixels=0):
    from workbench.planner.request import parse_targets
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory

    inter_gbps = _gbps("Inter-node GB/s", inter)
    request = PlanRequest(
        model=str(model or "").strip(), gpus=parse_gpu_spec(gpus), dtype=dtype, lora_rank=_int("LoRA rank", rank),
        lora_targets=parse_targets(str(targets or "language-all-linear")), batch_size=_int("Batch size", batch),
        max_length=_int("Max length", max_length), max_pixels=_int("Max pixels", max_pixels),
        min_pixels=_int("Min pixels", min_pixels), images_per_sample=_int("Images per sample", images, 0),
        gradient_checkpointing=bool(checkpointing), quantization=str(quantization or "none"),
        trained_tokens=_int("Trained tokens per row", trained_tokens or 0, 0), loss_on_trained_tokens_only=bool(trained_only),
        strategy=str(strategy or "auto"), nodes=_int("Nodes", nodes), recipe=recipe or "", vision=vision or "",
        merger=merger or "", language=language or "",
        video_frames=_int("Video frames", video_frames or 0, 0),
        video_max_pixels=_int("Video max pixels per frame", video_max_pixels or 0, 0),
        intra_node_gbps=_gbps("Intra-node GB/s", intra),
        **({"inter_node_gbps": inter_gbps} if inter_gbps is not None else {}))
    return plan_memory(request)


def bars(devices: list[dict]) -> pd.DataFrame:
    """Long table for a stacked bar per GPU: one row per (GPU, term), GiB; 'free' tops up to capacity.

    Every term is a row, 0 where a strategy has none: Gradio's plot keeps the colour domain of the
    first frame it drew, so a term missing from the first plan (gathered/buckets under device_map)
    was never drawn for a later fsdp plan. The plot stacks the last row at the bottom: weights
    there, free on top, and the legend reads in the stack's order."""
    rows = []
    for d in devices:
        rows.append({"GPU": d["device"], "term": "free", "GiB": max(0, d["capacity_bytes"] - d["total_bytes"]) / GIB})
        for term in reversed(TERMS):
            rows.append({"GPU": d["device"], "term": TERM_LABELS[term], "GiB": d.get(term, 0) / GIB})
    return pd.DataFrame(rows)


def device_frame(devices: list[dict]) -> pd.DataFrame:
    shown = terms_of(devices)
    return pd.DataFrame([{"GPU": d["device"], "capacity": round(d["capacity_bytes"] / GIB, 2),
                          **{TERM_LABELS[t]: round(d.get(t, 0) / GIB, 2) for t in shown},
                          "total": round(d["total_bytes"] / GIB, 2),
                          "free": round((d["capacity_bytes"] - d["total_bytes"]) / GIB, 2)} for d in devices])


def map_frame(device_map: dict | None) -> pd.DataFrame:
    return pd.DataFrame([{"device": dev, "modules": mods} for dev, mods in map_ranges(device_map or {})],
                        columns=["device", "modules"])


def suggestion_frame(suggestions: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"fits": "yes" if s["fits"] else "no", "saves GiB": round(s["saves_bytes"] / GIB, 2),
                          "peak GPU GiB": round(s["peak_bytes"] / GIB, 2), "change": s["change"]}
                         for s in suggestions], columns=["fits", "saves GiB", "peak GPU GiB", "change"])


def strategy_frame(entries: list[dict], selected: str | None = None) -> pd.DataFrame:
    """One row per strategy; the selected one is marked with a leading '> '."""
    return pd.DataFrame([{"strategy": ("> " if e["name"] == selected else "") + e["name"],
                          "fits": "yes" if e["fits"] else "no", "peak GPU GiB": round(e["peak_bytes"] / GIB, 2),
                          "free GiB": round(e["min_free_bytes"] / GIB, 2), "speed": f"{e['relative_speed']:.2f}x",
                          "why": e["why"]} for e in entries], columns=STRATEGY_COLUMNS)


def auto_text(auto: dict) -> str:
    per = ", ".join(f"{d['device']} {d['total_bytes'] / GIB:.1f} GiB" + (" (OOM)" if d["device"] in auto["out_of_memory"] else "")
                    for d in auto["devices"])
    return f"**accelerate `device_map=\"auto\"`:** {auto['summary']}  \n{per}"


def plan_state(plan) -> dict:
    """What the tab keeps of a plan: enough to redraw any strategy and to apply it to the run config."""
    r = plan.request
    entries = [dict(e) for e in plan.strategies]
    state = {"chosen": plan.strategy, "strategies": entries, "model": r.model, "on_cpu": r.on_cpu,
             "request": r.fields(),
             "max_length": r.max_length, "max_pixels": r.max_pixels, "min_pixels": r.min_pixels,
             "gradient_checkpointing": r.gradient_checkpointing}
    return select(state, plan.strategy)


def select(state: dict, name: str) -> dict:
    """The state with ``name`` as the strategy shown and applied; "devices" feeds the Training tab's
    predicted-peak lines, so it follows the selection."""
    entry = next(e for e in state["strategies"] if e["name"] == name)
    return {**state, "strategy": name, "fits": entry["fits"], "devices": entry["devices"],
            "device_map": entry.get("device_map") if name == "device_map" else None}


def on_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images, checkpointing,
            strategy="auto", nodes=1, intra=None, inter=None, quantization="none", trained_tokens=0,
            trained_only=True, recipe="", vision="", merger="", language="", video_frames=0, video_max_pixels=0):
    """The Plan button: (verdict, strategy table, bars, per-GPU table, map table, auto comparison,
    suggestions, plan state)."""
    try:
        plan = make_plan(model, gpus, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, images,
                         checkpointing, strategy, nodes, intra, inter, quantization, trained_tokens, trained_only,
                         recipe, vision, merger, language, video_frames, video_max_pixels)
    except UserError as exc:
        empty = pd.DataFrame()
        # no empty frame for the chart: Gradio 6.31 would keep its axes categorical for good
        return (f"**Cannot plan:** {exc}", strategy_frame([]), gr.skip(), empty, map_frame({}), "",
                suggestion_frame([]), None)
    state = plan_state(plan)
    text = (f"### {plan.choice}\n\n" + verdict(plan)).replace("FITS:", "**Fits:**") \
        .replace("DOES NOT FIT:", "**Does not fit:**")
    return (text, strategy_frame(plan.strategies, plan.strategy), bars(plan.devices), device_frame(plan.devices),
            map_frame(plan.device_map), auto_text(plan.accelerate_auto), suggestion_frame(plan.suggestions), state)


def on_select(state: dict | None, row: int):
    """Choosing a row of the strategy table: (strategy table, bars, per-GPU table, map table, note, state)."""
    if not state or not 0 <= row < len(state["strategies"]):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), "", state
    name = state["strategies"][row]["name"]
    new = select(state, name)
    entry = state["strategies"][row]
    note = (f"Showing **{name}**: {entry['why']}" + ("" if entry["fits"] else " It does not fit: "
                                                     "\"Use this plan\" needs a strategy that fits."))
    return (strategy_frame(state["strategies"], name), bars(entry["devices"]), device_frame(entry["devices"]),
            map_frame(new["device_map"]), note, new)


def _on_select_event(state, evt: gr.SelectData):
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return on_select(state, int(row))


def use_plan(plan_state: dict | None, config: dict) -> tuple[dict, str]:
    """'Use this plan': the model and settings the plan was made with, its strategy and node
    count (and for device_map its map) into the RunConfig dict; or the old dict and why not."""
    from workbench.training.checks import config_from_raw

    if not plan_state:
        return config, "Make a plan first."
    name = plan_state["strategy"]
    if not plan_state["fits"]:
        return config, (f"Not applied: this plan does not fit with {name}. Choose a strategy that fits in the "
                        "table, or apply one of the suggestions and plan again.")
    r = plan_state["request"]
    on_cpu = plan_state.get("on_cpu", False)
    try:
        new = {**config, **with_plan(config_from_raw(config), r, name, plan_state["device_map"]).to_dict()}
    except UserError as exc:
        return config, f"Not applied: {exc}"
    where = ("one process on this machine's CPU" if on_cpu else
             f"device_map over {len(set(map(str, plan_state['device_map'].values())))} GPU(s)" if name == "device_map"
             else f"{name} over {r['nodes']} node(s) x {r['gpus_per_node']} GPU(s)")
    base = f", {r['quantization']} base" if r["quantization"] != "none" else ""
    return new, (f"Applied: {r['model']}{base}, {where}, LoRA r{r['lora_rank']}, batch {r['batch_size']}, max_length "
                 f"{r['max_length']}, max_pixels {r['max_pixels']}, gradient checkpointing "
                 f"{'on' if r['gradient_checkpointing'] else 'off'}.")


def build(ctx) -> dict:
    """Widgets of the Memory planner tab, inside an open ``gr.Tab``; wires its events.

    Returns what the app may listen to: "plan" (the plan state, for the Training tab's
    predicted peaks), "applied" (the "Use this plan" event: chain ``.then`` on it to refill
    other tabs from the new config), and the form's "inputs" plus the "strategies",
    "chart" and "suggestions" components (for tests)."""
    config = ctx.config.value if ctx is not None and getattr(ctx, "config", None) is not None else None
    model_name = config["model"]["name_or_path"] if config else "qwen2-vl-7b-instruct"
    d = {**form_defaults(model_name), **(followed(config) if config else {})}
    gr.Markdown("How to train on your GPUs: per-GPU memory of one LoRA training step with `device_map` (one "
                "process, layers spread over the GPUs), DDP (a replica per GPU) and FSDP2 (weights sharded over "
                "every GPU of every node), the expected speed of each, and the fastest that fits.")
    # The numbers carry no Gradio minimum: its check runs before on_plan and answers 0 with a bare "Error"
    # over the old verdict; on_plan's own check names the field.
    with gr.Row():
        model = gr.Textbox(d["model"], label="Model", info="Preset (qwen2-vl-7b-instruct, qwen2.5-vl-72b-instruct, qwen3-vl-8b-instruct, ...), a demo or a local folder.", elem_id="planner-model")
        gpus = gr.Textbox(default_gpu_spec(), label="GPUs per node", info="Detected (cpu: no GPU here, this machine's memory), sizes (4x40GiB, 2x80GB) or cards (4xA800-40GB, 8xH100, 2x4090).", elem_id="planner-gpus")
        nodes = gr.Number(d["nodes"], precision=0, label="Nodes", info="For ddp/fsdp; device_map uses one.", elem_id="planner-nodes")
        strategy = gr.Dropdown(list(STRATEGIES), value=d["strategy"], label="Strategy", info="auto: the fastest that fits.", elem_id="planner-strategy")
    with gr.Row():
        dtype = gr.Dropdown(DTYPES, value=d["dtype"], label="Weight dtype")
        rank = gr.Number(d["rank"], precision=0, label="LoRA rank", elem_id="planner-rank")
        targets = gr.Dropdown(list(TARGET_PRESETS), value=d["targets"], allow_custom_value=True, label="LoRA targets")
        batch = gr.Number(d["batch"], precision=0, label="Batch size per GPU", elem_id="planner-batch")
        checkpointing = gr.Checkbox(d["checkpointing"], label="Gradient checkpointing", elem_id="planner-checkpointing")
        quantization = gr.Dropdown(QUANTIZATIONS, value=d["quantization"], label="Base quantisation",
                                   info="nf4: QLoRA, a 4-bit base.", elem_id="planner-quantization")
    with gr.Row():
        max_length = gr.Number(d["max_length"], precision=0, label="Max length (text + visual tokens)", elem_id="planner-max-length")
        max_pixels = gr.Number(d["max_pixels"], precision=0, label="Max pixels per image", elem_id="planner-max-pixels")
        min_pixels = gr.Number(d["min_pixels"], precision=0, label="Min pixels per image")
        images = gr.Number(d["images"], precision=0, label="Images per sample")
        trained_tokens = gr.Number(d["trained_tokens"], precision=0, label="Trained tokens per row",
                                   info="Answer tokens (Dataset tab: p95 or max). 0: not measured, every token.",
                                   elem_id="planner-trained-tokens")
        trained_only = gr.Checkbox(d["trained_only"], label="Loss on trained tokens only",
                                   info="Off: the model's own loss over every token.")
    with gr.Row():
        video_frames = gr.Number(d["video_frames"], precision=0, label="Video frames per row",
                                 info="0: no video. Every 2 frames are one temporal patch.", elem_id="planner-video-frames")
        video_max_pixels = gr.Number(d["video_max_pixels"], precision=0, label="Video max pixels per frame",
                                     info="0: qwen-vl-utils' default (768 tokens a frame).",
                                     elem_id="planner-video-max-pixels")
    with gr.Row():
        recipe = gr.Dropdown(RECIPE_CHOICES, value=d["recipe"], label="What to train",
                             info="A recipe (lora.recipe); the parts below override it.", elem_id="planner-recipe")
        parts = {name: gr.Dropdown(PART_CHOICES, value=d[name], label=label, elem_id=f"planner-{name}",
                                   info=info)
                 for name, label, info in (
                     ("vision", "Vision tower", "Training it stores its activations; full: 16 B per parameter."),
                     ("merger", "Merger", "full: 16 bytes per parameter (fp32 copy, gradient, AdamW)."),
                     ("language", "Language model", "full: every weight again in fp32 state."))}
    with gr.Accordion("Links (the speed estimate only)", open=False):
        with gr.Row():
            intra = gr.Number(d["intra"], label="Intra-node GB/s", info="Empty: from the card (NVLink or PCIe); 20 for sizes.")
            inter = gr.Number(d["inter"], label="Inter-node GB/s", info="25: one 200 Gb/s InfiniBand port per node.")
    with gr.Row():
        fill = gr.Button("Fill from current settings")
        plan_button = gr.Button("Plan", variant="primary")
    verdict_md = gr.Markdown()
    strategies = gr.Dataframe(strategy_frame([]), label="Strategies (choose a row to see its GPUs)", interactive=False,
                              wrap=True, column_widths=["11%", "6%", "11%", "9%", "7%", "56%"],
                              elem_id="planner-strategies")
    selected_md = gr.Markdown()
    chart = gr.BarPlot(None, x="GPU", y="GiB", color="term", title="Memory per GPU at the step's peak (GiB)",
                       y_title="GiB", height=320, color_map=TERM_COLORS)
    table = gr.Dataframe(label="Per GPU (GiB)", interactive=False)
    device_map = gr.Dataframe(map_frame({}), label="Device map", interactive=False, wrap=True)
    suggestions = gr.Dataframe(suggestion_frame([]), label="To make it fit", interactive=False, wrap=True,
                               column_widths=["8%", "12%", "14%", "66%"], elem_id="planner-suggestions")
    auto_md = gr.Markdown()
    plan = gr.State(None)
    with gr.Row():
        use = gr.Button("Use this plan", elem_id="planner-use")
        use_status = gr.Markdown()

    inputs = {"model": model, "gpus": gpus, "dtype": dtype, "rank": rank, "targets": targets, "batch": batch,
              "max_length": max_length, "max_pixels": max_pixels, "min_pixels": min_pixels, "images": images,
              "checkpointing": checkpointing, "strategy": strategy, "nodes": nodes, "intra": intra, "inter": inter,
              "quantization": quantization, "trained_tokens": trained_tokens, "trained_only": trained_only,
              "recipe": recipe, **parts, "video_frames": video_frames, "video_max_pixels": video_max_pixels}
    plan_button.click(on_plan, list(inputs.values()),
                      [verdict_md, strategies, chart, table, device_map, auto_md, suggestions, plan])
    strategies.select(_on_select_event, [plan], [strategies, chart, table, device_map, selected_md, plan])
    fill.click(fill_from, [ctx.config],
               [model, dtype, rank, targets, batch, max_length, max_pixels, min_pixels, checkpointing, strategy, nodes,
                quantization, trained_tokens, trained_only, recipe, *parts.values(), video_frames, video_max_pixels])
    applied = use.click(use_plan, [plan, ctx.config], [ctx.config, use_status])
    ctx.config.change(follow, [ctx.config], [inputs[name] for name in FOLLOWED], show_progress="hidden")
    return {"plan": plan, "applied": applied, "inputs": inputs, "strategies": strategies, "chart": chart,
            "suggestions": suggestions}
