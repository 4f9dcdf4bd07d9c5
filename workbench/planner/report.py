"""Plans for people: the per-GPU table, the map as module ranges, the verdict."""

from __future__ import annotations

import re

GIB = 1024**3
TERMS = ("weights_bytes", "lora_bytes", "activation_bytes", "logits_bytes", "dequant_bytes", "comm_bytes",
         "overhead_bytes")
TERM_LABELS = {"weights_bytes": "weights", "lora_bytes": "LoRA+optim", "activation_bytes": "activations",
               "logits_bytes": "logits/loss", "dequant_bytes": "dequantised", "comm_bytes": "gathered/buckets",
               "overhead_bytes": "CUDA+alloc"}
# Shown only where a device has them: dequantised weights (a quantised base), gathered units or buckets (ddp, fsdp).
OPTIONAL_TERMS = ("dequant_bytes", "comm_bytes")


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def map_ranges(device_map: dict) -> list[tuple[str, str]]:
    """Consecutive modules on one device folded into ranges: [(device, 'layers.0-19, norm'), ...]."""
    rows: list[list] = []
    for name, device in device_map.items():
        short = name.removeprefix("model.language_model.").removeprefix("model.") or "(whole model)"
        match = re.fullmatch(r"(.*\.)?(\w+)\.(\d+)", short)
        label = str(device) if not isinstance(device, int) else f"cuda:{device}"
        if rows and rows[-1][0] == label and match and rows[-1][2] == (match.group(1) or "") + match.group(2) \
                and rows[-1][4] == int(match.group(3)) - 1:
            rows[-1][4] = int(match.group(3))
            continue
        if match:
            rows.append([label, None, (match.group(1) or "") + match.group(2), int(match.group(3)), int(match.group(3))])
        else:
            rows.append([label, short, None, None, None])
    folded: list[tuple[str, list[str]]] = []
    for label, plain, stem, first, last in rows:
        text = plain if plain else (f"{stem}.{first}" if first == last else f"{stem}.{first}-{last}")
        if folded and folded[-1][0] == label:
            folded[-1][1].append(text)
        else:
            folded.append((label, [text]))
    return [(label, ", ".join(parts)) for label, parts in folded]


def offload_ranges(modules: list[str]) -> str:
    """Module names folded into ranges for a sentence: 'layers.22-79, norm, lm_head'."""
    return "; ".join(mods for _, mods in map_ranges({m: "cpu" for m in modules}))


def verdict(plan) -> str:
    """FITS with the peak GPU, or DOES NOT FIT with what does not: the modules that fit on no
    GPU, or the GPU that needs more than it has."""
    worst = max(plan.devices, key=lambda d: d["total_bytes"] / d["capacity_bytes"])
    r = plan.request
    batch = f"batch {r.batch_size} packed sequence(s)" if r.packing else f"batch {r.batch_size}"
    settings = (f"{batch}, max_length {r.max_length}, max_pixels {r.max_pixels}, gradient "
                f"checkpointing {'on' if r.gradient_checkpointing else 'off'}, {loss_basis(r)}")
    if getattr(r, "video_frames", 0):
        settings += f", a video of {r.video_frames} frames at {r.video_max_pixels or 'the default'} pixels"
    if r.quantization != "none":
        settings += f", {r.quantization} base"
    amount = f"{gib(worst['total_bytes'])} GiB of {gib(worst['capacity_bytes'])} GiB"
    same = len({d["total_bytes"] for d in plan.devices}) == 1 and len(plan.devices) > 1
    where = "every GPU" if same else worst["device"]
    if plan.fits:
        head = f"FITS: peak {amount} on {where} ({settings})."
    elif getattr(plan, "offloaded", None):
        gpus = len(plan.devices)
        head = (f"DOES NOT FIT: {offload_ranges(plan.offloaded)} fit on none of the {gpus} GPU{'s' if gpus > 1 else ''}, "
                f"which hold up to {amount} with the rest ({settings}).")
    else:
        head = f"DOES NOT FIT: {where} would need {amount} ({settings})."
    if plan.max_length_that_fits:
        head += f" Largest max_length that fits: {plan.max_length_that_fits}."
    else:
        head += " No max_length fits with these settings."
    if getattr(r, "video_frames", 0):
        if plan.max_video_frames_that_fits:
            head += (f" Largest video frame count that fits: {plan.max_video_frames_that_fits} (rows of "
                     f"{plan.video_row_tokens} tokens with the same text: set max_length to match).")
        else:
            head += " No video frame count fits with these settings."
    if plan.max_batch_size_that_fits:
        head += f" Largest batch size at this max_length: {plan.max_batch_size_that_fits}."
    return head


def loss_basis(request) -> str:
    """Which positions the plan's loss term counts, in a few words."""
    if not request.loss_on_trained_tokens_only:
        return "loss on every token"
    if request.trained_tokens:
        return f"loss on {request.trained_tokens} trained tokens per row"
    return "loss on trained tokens (not measured: every token counted)"


def terms_of(devices: list[dict]) -> tuple[str, ...]:
    """The terms to show: dequantised and gathered/buckets only where some device has them."""
    return tuple(t for t in TERMS if t not in OPTIONAL_TERMS or any(d.get(t) for d in devices))


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = ()) -> str:
    """Columns right-aligned (numbers) except those in ``left``."""
    lines = [header] + rows
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
           .rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def device_table(plan) -> str:
    """One row per GPU, GiB, terms as columns."""
    shown = terms_of(plan.devices)
    header = ["GPU", "capacity"] + [TERM_LABELS[t] for t in shown] + ["total", "free"]
    rows = [[d["device"], gib(d["capacity_bytes"])] + [gib(d.get(t, 0)) for t in shown]
            + [gib(d["total_bytes"]), gib(d["capacity_bytes"] - d["total_bytes"])] for d in plan.devices]
    return _table(header, rows) + "\n(GiB)"


def strategy_table(plan) -> str:
    """One row per strategy: fits, the fullest GPU, free memory there, expected speed, why."""
    rows = []
    for e in plan.strategies:
        mark = "*" if e["name"] == plan.strategy else " "
        rows.append([mark + e["name"], "yes" if e["fits"] else "no", gib(e["peak_bytes"]),
                     gib(e["min_free_bytes"]), f"{e['relative_speed']:.2f}x", e["why"]])
    return _table(["strategy", "fits", "peak GPU", "free", "speed", "why"], rows, left=(0, 5)) + \
        "\n(GiB per GPU; speed against device_map on these GPUs; * chosen)"


def format_plan(plan) -> str:
    """The human report the CLI prints."""
    parts = []
    if plan.strategies:
        parts += ["Strategy: " + plan.choice, "", strategy_table(plan), ""]
    parts += [verdict(plan), "", device_table(plan)]
    if plan.device_map:
        parts += ["", "Device map:"]
        parts += [f"  {device}: {modules}" for device, modules in map_ranges(plan.device_map)]
    if plan.device_map and plan.map_source != "accelerate":
        parts.append("  (the planner's own sequential map)")
    auto = plan.accelerate_auto
    if plan.strategy == "device_map":
        parts += ["", "accelerate device_map='auto': " + auto["summary"]]
        parts += [f"  {d['device']}: {gib(d['total_bytes'])} GiB" + ("  <- out of memory" if d["device"] in auto["out_of_memory"] else "")
                  for d in auto["devices"]]
    if plan.suggestions:
        parts += ["", "To make it fit (largest saving first):"]
        for s in plan.suggestions:
            saves = f", saves {gib(s['saves_bytes'])} GiB" if s["saves_bytes"] > 0 else ""
            parts.append(f"  - {s['change']}: {'fits' if s['fits'] else 'still too big'}{saves}, "
                         f"peak GPU {gib(s['peak_bytes'])} GiB")
    for note in plan.notes:
        parts.append("note: " + note)
    parts.append(f"\nplanned in {plan.plan_seconds:.2f} s")
    return "\n".join(parts)
