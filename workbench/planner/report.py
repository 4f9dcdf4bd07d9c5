"""Plans for people: the per-GPU table, the map as module ranges, the verdict."""

from __future__ import annotations

import re

GIB = 1024**3
TERMS = ("weights_bytes", "lora_bytes", "activation_bytes", "logits_bytes", "overhead_bytes")
TERM_LABELS = {"weights_bytes": "weights", "lora_bytes": "LoRA+optim", "activation_bytes": "activations",
               "logits_bytes": "logits/loss", "overhead_bytes": "CUDA+alloc"}


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


def verdict(plan) -> str:
    worst = max(plan.devices, key=lambda d: d["total_bytes"] / d["capacity_bytes"])
    r = plan.request
    head = (f"{'FITS' if plan.fits else 'DOES NOT FIT'}: peak {gib(worst['total_bytes'])} GiB of "
            f"{gib(worst['capacity_bytes'])} GiB on {worst['device']} (batch {r.batch_size}, max_length "
            f"{r.max_length}, max_pixels {r.max_pixels}, gradient checkpointing "
            f"{'on' if r.gradient_checkpointing else 'off'}).")
    if plan.max_length_that_fits:
        head += f" Largest max_length that fits: {plan.max_length_that_fits}."
    else:
        head += " No max_length fits with these settings."
    if plan.max_batch_size_that_fits:
        head += f" Largest batch size at this max_length: {plan.max_batch_size_that_fits}."
    return head


def device_table(plan) -> str:
    """One row per GPU, GiB, terms as columns."""
    header = ["GPU", "capacity"] + [TERM_LABELS[t] for t in TERMS] + ["total", "free"]
    lines = [header]
    for d in plan.devices:
        lines.append([d["device"], gib(d["capacity_bytes"])] + [gib(d[t]) for t in TERMS]
                     + [gib(d["total_bytes"]), gib(d["capacity_bytes"] - d["total_bytes"])])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n(GiB)"


def format_plan(plan) -> str:
    """The human report the CLI prints."""
    parts = [verdict(plan), "", device_table(plan), "", "Device map:"]
    parts += [f"  {device}: {modules}" for device, modules in map_ranges(plan.device_map)]
    if plan.map_source != "accelerate":
        parts.append("  (the planner's own sequential map)")
    auto = plan.accelerate_auto
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
