"""When a plan does not fit: single changes that make it fit, ordered by bytes saved.

Each candidate is judged by the same memory model (the planner's packer), and reported
with its resulting numbers: whether it fits, the bytes it saves across all GPUs, and the
per-GPU totals.
"""

from __future__ import annotations

from dataclasses import replace

from workbench.hardware import GIB
from workbench.planner import terms
from workbench.planner.device_map import Step
from workbench.planner.layout import Layout


def suggestions(request, layout: Layout, step: Step, caps: list[int]) -> list[dict]:
    from workbench.planner.plan import LARGER_GPUS_GIB, largest_fitting, layout_for, need_bytes, packs

    base_need, _, _ = need_bytes(layout, step, caps)
    found: list[dict] = []

    def add(change: str, settings: dict, lay: Layout, st: Step, gpu_caps: list[int]) -> None:
        need, rows, fits = need_bytes(lay, st, gpu_caps)
        # More or larger GPUs add capacity rather than save memory: they rank after the savers.
        saves = 0 if "gpus" in settings else int(base_need - need)
        found.append({"change": change, "settings": settings, "fits": fits, "saves_bytes": saves,
                      "peak_bytes": int(max(r["total_bytes"] for r in rows)),
                      "devices_total_bytes": [int(r["total_bytes"]) for r in rows[: len(gpu_caps)]]})

    visual = request.visual_tokens
    # Shorter rows.
    best_len = largest_fitting(lambda n: packs(layout, replace(step, max_length=n), caps), visual + 1, step.max_length - 1)
    if best_len:
        add(f"lower max_length {step.max_length} -> {best_len}", {"data.max_length": best_len},
            layout, replace(step, max_length=best_len), caps)
    # Fewer image tokens: the same text in a row that is shorter by the saved image tokens.
    if request.images_per_sample:
        per_image = step.visual_tokens_per_image
        floor = terms.visual_tokens_per_image(request.min_pixels)

        def with_tokens(k: int) -> Step:
            return replace(step, visual_tokens_per_image=k,
                           max_length=step.max_length - request.images_per_sample * (per_image - k))

        best_k = largest_fitting(lambda k: packs(layout, with_tokens(k), caps), floor, per_image - 1)
        if best_k:
            pixels = best_k * terms.IMAGE_FACTOR**2
            st = with_tokens(best_k)
            add(f"lower max_pixels {request.max_pixels} -> {pixels} ({per_image} -> {best_k} tokens per image; "
                f"max_length {step.max_length} -> {st.max_length} for the same text)",
                {"data.max_pixels": pixels, "data.max_length": st.max_length}, layout, st, caps)
    if not step.gradient_checkpointing:
        st = replace(step, gradient_checkpointing=True)
        if packs(layout, st, caps):
            add("turn gradient checkpointing on", {"training.gradient_checkpointing": True}, layout, st, caps)
    if step.batch_size > 1:
        best_b = largest_fitting(lambda b: packs(layout, replace(step, batch_size=b), caps), 1, step.batch_size - 1)
        if best_b:
            add(f"lower batch size {step.batch_size} -> {best_b} (raise gradient accumulation to keep the "
                "effective batch)", {"training.per_device_train_batch_size": best_b},
                layout, replace(step, batch_size=best_b), caps)
    for rank in [r for r in (4, 2, 1) if r < step.lora_rank]:
        lay = layout_for(replace(request, lora_rank=rank))
        st = replace(step, lora_rank=rank)
        if packs(lay, st, caps):
            add(f"lower LoRA rank {step.lora_rank} -> {rank}", {"lora.rank": rank}, lay, st, caps)
            break
    size = max(caps)
    for count in range(len(caps) + 1, min(2 * len(caps) + 2, 17)):
        more = list(caps) + [size] * (count - len(caps))
        if packs(layout, step, more):
            add(f"use {count} GPUs of {size / GIB:.0f} GiB each", {"gpus": f"{count}x{size // GIB}GiB"}, layout, step, more)
            break
    for gib in LARGER_GPUS_GIB:
        if gib * GIB > size and packs(layout, step, [gib * GIB] * len(caps)):
            add(f"use {len(caps)} GPU(s) of {gib} GiB each", {"gpus": f"{len(caps)}x{gib}GiB"}, layout, step,
                [gib * GIB] * len(caps))
            break
    quantized = layout_for(request, quantize_4bit=True)
    if packs(quantized, step, caps):
        add("load the base weights in 4-bit (QLoRA with bitsandbytes NF4)", {"quantization": "4bit"},
            quantized, step, caps)
    found.sort(key=lambda s: (not s["fits"], -s["saves_bytes"]))
    return found

