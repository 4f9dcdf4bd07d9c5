"""When a plan does not fit: single changes that make it fit, ordered by bytes saved.

Each candidate is judged by the chosen strategy's own memory model (the device_map packer,
or the ddp/fsdp rows), and reported with its resulting numbers: whether it fits, the bytes
it saves across the node's GPUs, and the per-GPU totals.
"""

from __future__ import annotations

from dataclasses import replace

from workbench.hardware import GIB
from workbench.planner import terms
from workbench.planner.device_map import Step
from workbench.planner.layout import Layout
from workbench.planner.request import layout_for
from workbench.planner.search import LARGER_GPUS_GIB, largest_fitting
from workbench.planner.strategies import strategy as strategy_model

MAX_GPUS_PER_NODE = 16
MAX_SUGGESTED_NODES = 16


def suggestions(request, layout: Layout, step: Step, caps: list[int], model) -> list[dict]:
    """Changes that make ``model`` (a strategy from ``strategies``) fit, largest saving first."""
    base_need, _, _ = model.need(layout, step, caps)
    found: list[dict] = []

    def add(change: str, settings: dict, lay: Layout, st: Step, gpu_caps: list[int], m=model) -> None:
        need, rows, fits = m.need(lay, st, gpu_caps)
        # More or larger GPUs add capacity rather than save memory: they rank after the savers.
        capacity = "gpus" in settings or "training.nodes" in settings
        saves = 0 if capacity else int(base_need - need)
        found.append({"change": change, "settings": settings, "fits": fits, "saves_bytes": saves,
                      "peak_bytes": int(max(r["total_bytes"] for r in rows)),
                      "devices_total_bytes": [int(r["total_bytes"]) for r in rows[: len(gpu_caps)]]})

    def fits(st: Step, lay: Layout = layout, gpu_caps=caps) -> bool:
        return model.fits(lay, st, gpu_caps)

    visual = request.visual_tokens(layout)
    # Shorter rows.
    best_len = largest_fitting(lambda n: fits(replace(step, max_length=n)), visual + 1, step.max_length - 1)
    if best_len:
        add(f"lower max_length {step.max_length} -> {best_len}", {"data.max_length": best_len},
            layout, replace(step, max_length=best_len), caps)
    # Fewer image tokens: the same text in a row that is shorter by the saved image tokens.
    if request.images_per_sample:
        per_image = step.visual_tokens_per_image
        factor = layout.shape.pixels_per_token
        floor = terms.visual_tokens_per_image(request.min_pixels, factor)

        def with_tokens(k: int) -> Step:
            return replace(step, visual_tokens_per_image=k,
                           max_length=step.max_length - request.images_per_sample * (per_image - k))

        best_k = largest_fitting(lambda k: fits(with_tokens(k)), floor, per_image - 1)
        if best_k:
            pixels = best_k * factor**2
            st = with_tokens(best_k)
            add(f"lower max_pixels {request.max_pixels} -> {pixels} ({per_image} -> {best_k} tokens per image; "
                f"max_length {step.max_length} -> {st.max_length} for the same text)",
                {"data.max_pixels": pixels, "data.max_length": st.max_length}, layout, st, caps)
    # Fewer video frames: the same text in a row shorter by the dropped frame pairs' tokens.
    if step.video_groups > 1:
        def with_groups(g: int) -> Step:
            return replace(step, video_groups=g,
                           max_length=step.max_length - (step.video_groups - g) * step.video_tokens_per_group)

        best_g = largest_fitting(lambda g: fits(with_groups(g)), 1, step.video_groups - 1)
        if best_g:
            st, temporal = with_groups(best_g), layout.shape.temporal_patch
            add(f"lower video frames {request.video_frames} -> {best_g * temporal} (data.video_max_frames caps the "
                f"frames each video gives; max_length {step.max_length} -> {st.max_length} for the same text)",
                {"data.video_max_frames": best_g * temporal, "data.max_length": st.max_length}, layout, st, caps)
    if not step.gradient_checkpointing:
        st = replace(step, gradient_checkpointing=True)
        if fits(st):
            add("turn gradient checkpointing on", {"training.gradient_checkpointing": True}, layout, st, caps)
    if step.batch_size > 1:
        best_b = largest_fitting(lambda b: fits(replace(step, batch_size=b)), 1, step.batch_size - 1)
        if best_b:
            add(f"lower batch size {step.batch_size} -> {best_b} (raise gradient accumulation to keep the "
                "effective batch)", {"training.per_device_train_batch_size": best_b},
                layout, replace(step, batch_size=best_b), caps)
    for rank in [r for r in (4, 2, 1) if r < step.lora_rank]:
        lay = layout_for(replace(request, lora_rank=rank))
        st = replace(step, lora_rank=rank)
        if fits(st, lay):
            add(f"lower LoRA rank {step.lora_rank} -> {rank}", {"lora.rank": rank}, lay, st, caps)
            break
    size = max(caps)
    card = _one_card(request.gpus)
    # more or larger GPUs do not apply to a plan for this machine's CPU
    for count in range(len(caps) + 1, min(2 * len(caps) + 2, MAX_GPUS_PER_NODE + 1) if not request.on_cpu else 0):
        more = list(caps) + [size] * (count - len(caps))
        if fits(step, gpu_caps=more):
            per_node = " per node" if request.nodes > 1 else ""
            spec = f"{count}x{card}" if card else f"{count}x{size // GIB}GiB"
            what = spec if card else f"{count} GPUs of {size / GIB:.0f} GiB each"
            add(f"use {what}{per_node}", {"gpus": spec}, layout, step, more)
            break
    if model.name == "fsdp":
        for nodes in range(request.nodes + 1, min(2 * request.nodes + 2, MAX_SUGGESTED_NODES + 1)):
            more_nodes = strategy_model("fsdp", nodes)
            if more_nodes.fits(layout, step, caps):
                add(f"shard over {nodes} nodes of {len(caps)} GPUs", {"training.nodes": nodes}, layout, step, caps,
                    more_nodes)
                break
    for gib in LARGER_GPUS_GIB if not request.on_cpu else ():
        if gib * GIB > size and fits(step, gpu_caps=[gib * GIB] * len(caps)):
            add(f"use {len(caps)} GPU(s) of {gib} GiB each", {"gpus": f"{len(caps)}x{gib}GiB"}, layout, step,
                [gib * GIB] * len(caps))
            break
    if step.trained_tokens is None:
        st = replace(step, trained_tokens=request.trained_tokens or request.max_length)
        if fits(st):
            add("compute the loss on trained tokens only", {"training.loss_on_trained_tokens_only": True},
                layout, st, caps)
    if request.quantization == "none":
        quantized = layout_for(request, quantization="nf4")
        if fits(step, quantized):
            add("load the base weights in 4-bit (QLoRA: bitsandbytes NF4)", {"model.quantization": "nf4"},
                quantized, step, caps)
    found.sort(key=lambda s: (not s["fits"], -s["saves_bytes"]))
    return found


def strategy_switches(entries: list[dict], chosen: str) -> list[dict]:
    """For a strategy asked by name that does not fit: the other strategies that do."""
    asked = next(e for e in entries if e["name"] == chosen)
    need = sum(d["total_bytes"] for d in asked["devices"])
    return [{"change": f"train with {e['name']} instead of {chosen} ({e['relative_speed']:.2f}x device_map's speed)",
             "settings": {"training.strategy": e["name"]}, "fits": True,
             "saves_bytes": int(need - sum(d["total_bytes"] for d in e["devices"])), "peak_bytes": e["peak_bytes"],
             "devices_total_bytes": [d["total_bytes"] for d in e["devices"]]}
            for e in entries if e["fits"] and e["name"] != chosen]


def _one_card(gpus) -> str | None:
    """The card name when every GPU is the same known card (A800-40GB), else None."""
    from workbench.hardware import find_card

    names = {g.name for g in gpus}
    if len(names) != 1:
        return None
    try:
        card = find_card(names.pop())
    except Exception:  # an ambiguous name: fall back to sizes
        return None
    return card.name if card is not None else None
