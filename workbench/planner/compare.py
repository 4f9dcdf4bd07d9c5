"""The strategies side by side: one entry per strategy (fits, per-GPU rows, peak, expected
speed against device_map, a one-sentence why), the automatic choice and its sentence."""

from __future__ import annotations

from workbench.planner import speed, strategies
from workbench.planner.device_map import Step
from workbench.planner.layout import Layout
from workbench.planner.report import gib, offload_ranges


def device_rows(rows: list[dict], caps: list[int]) -> list[dict]:
    return [{"device": f"cuda:{i}", "capacity_bytes": int(cap), **{k: int(v) for k, v in row.items()}}
            for i, (row, cap) in enumerate(zip(rows, caps))]


def entry(name: str, devices: list[dict], fits: bool, layout: Layout, step: Step, request, links,
          offloaded: list[str] = ()) -> dict:
    gpus = len(request.gpus)
    nodes = 1 if name == "device_map" else request.nodes
    world = gpus if name == "device_map" else nodes * gpus
    timed = speed.timing(name, layout, step, world, nodes, links)
    e = {"name": name, "fits": bool(fits), "devices": devices,
         "peak_bytes": max(d["total_bytes"] for d in devices),
         "relative_speed": round(timed["relative_speed"], 3), "why": "",
         "world_size": world, "nodes": nodes,
         "min_free_bytes": min(d["capacity_bytes"] - d["total_bytes"] for d in devices),
         "compute_seconds": round(timed["compute_seconds"], 4), "dequant_seconds": round(timed["dequant_seconds"], 4),
         "comm_seconds": round(timed["comm_seconds"], 4),
         "comm_bytes_per_step": timed["comm_bytes_per_step"]}
    if name == "device_map":
        e["offloaded"] = list(offloaded)
    # bitsandbytes keeps 8-bit weights in integer tensors, which FSDP2 cannot shard: the workbench
    # refuses fsdp on an int8 base (nf4 it trains), so it is never recommended there
    e["trains"] = not (name == "fsdp" and request.quantization == "int8")
    e["why"] = why(e, layout, request, offloaded)
    if name == "fsdp" and request.quantization == "nf4" and world > 1:
        # accelerate broadcasts no 4-bit weights from rank 0: every rank loads and quantises the whole
        # base on the CPU, one checkpoint tensor at a time in the model dtype (docs/qlora-fsdp.md)
        e["host_bytes_per_rank"] = layout.weight_bytes + max(b for _, b in layout.param_bytes)
        e["why"] += (f" Each rank quantises the whole base on the CPU while loading: {gib(e['host_bytes_per_rank'])} "
                     "GiB of host memory per GPU.")
    if not e["trains"]:
        e["why"] += (" The workbench does not train fsdp on an int8 base (its 8-bit weights cannot be sharded): "
                     "use nf4, or device_map or ddp.")
    return e


def sharded_entries(layout: Layout, step: Step, request, links) -> list[dict]:
    caps = [g.total_bytes for g in request.gpus]
    out = []
    for name in ("ddp", "fsdp"):
        model = strategies.strategy(name, request.nodes)
        rows = model.rows(layout, step, caps)
        out.append(entry(name, device_rows(rows, caps), model.fits(layout, step, caps), layout, step, request, links))
    return out


def choose(entries: list[dict]) -> str:
    """The fastest strategy that fits (speeds equal to 0.01 are a tie, broken by the free memory
    of the fullest GPU); device_map when none fits (its suggestions say what would)."""
    fitting = [e for e in entries if e["fits"] and e.get("trains", True)]
    if not fitting:
        return "device_map"
    return max(fitting, key=lambda e: (round(e["relative_speed"], 2), e["min_free_bytes"]))["name"]


def _span(e: dict) -> str:
    gpus = len(e["devices"])
    if e["nodes"] > 1:
        return f"{e['world_size']} GPUs in {e['nodes']} nodes of {gpus}"
    return f"{gpus} GPU{'s' if gpus > 1 else ''}"


def why(e: dict, layout: Layout, request, offloaded=()) -> str:
    """One sentence: how the strategy uses the GPUs and, when it does not fit, what does not."""
    name, worst = e["name"], max(e["devices"], key=lambda d: d["total_bytes"] - d["capacity_bytes"])
    over = f"{gib(worst['total_bytes'])} GiB of {gib(worst['capacity_bytes'])} GiB"
    if name == "device_map":
        head = (f"One process, the layers spread over {_span(e)}, one GPU busy at a time" if e["world_size"] > 1
                else "One process on the one GPU")
        if request.nodes > 1:
            rest = "the other node idles" if request.nodes == 2 else f"the other {request.nodes - 1} nodes idle"
            head += f" (on one node; {rest})"
        if offloaded:
            return f"{head}; {offload_ranges(offloaded)} fit on none of them."
        if not e["fits"]:
            return f"{head}; {worst['device']} would need {over}."
        return head + "."
    if e["world_size"] == 1:
        head = "One process on the one GPU: the same as device_map, nothing to replicate or shard"
        return head + (f"; it would need {over}." if not e["fits"] else ".")
    busy = e["compute_seconds"] + e["dequant_seconds"]
    share = e["comm_seconds"] / (busy + e["comm_seconds"]) if busy else 0.0
    if name == "ddp":
        if not e["fits"]:
            return (f"A full replica on every GPU: {gib(layout.weight_bytes)} GiB of weights alone, "
                    f"{over} in all.")
        return (f"A full replica on each of {_span(e)}, {e['world_size']} batches at once; the LoRA gradient "
                f"all-reduce takes {_percent(share)} of a step.")
    shard = worst["weights_bytes"]
    if not e["fits"]:
        return (f"Weights sharded over {_span(e)} ({gib(shard)} GiB each), but every GPU also holds the gathered "
                f"layers, the whole batch's activations and the logits: {over}.")
    return (f"Weights sharded over {_span(e)} ({gib(shard)} GiB each), {e['world_size']} batches at once; "
            f"gathering the weights twice a step takes {_percent(share)} of it.")


def _percent(share: float) -> str:
    return "under 1%" if share < 0.005 else f"{share:.0%}"


def choice_sentence(chosen: str, entries: list[dict], asked: str) -> str:
    """The verdict on the strategy: which one and why, in one sentence."""
    by_name = {e["name"]: e for e in entries}
    c = by_name[chosen]
    others = [e for e in entries if e["name"] != chosen]
    if not any(e["fits"] for e in entries):
        need = "; ".join(f"{e['name']} leaves {offload_ranges(e['offloaded'])} off the GPUs" if e.get("offloaded")
                         else f"{e['name']} needs {gib(e['peak_bytes'])} GiB per GPU" for e in entries)
        return f"No strategy fits these GPUs ({need}); the suggestions below are for {chosen}."
    if asked != "auto":
        lead = f"{chosen} as asked"
        if not c["fits"]:
            best = choose(entries)
            return (f"{lead} does not fit ({gib(c['peak_bytes'])} GiB on the fullest GPU); {best} would, at "
                    f"{by_name[best]['relative_speed']:.2f}x device_map's speed.")
    else:
        lead = f"{chosen} over {_span(c)}"
    free = f"{gib(c['min_free_bytes'])} GiB free on the fullest GPU"
    if chosen == "device_map":
        rest = [f"{e['name']} needs {gib(e['peak_bytes'])} GiB per GPU" if not e["fits"]
                else f"{e['name']} is not trained on an int8 base" for e in others
                if not e["fits"] or not e.get("trains", True)]
        tail = f" ({'; '.join(rest)})" if rest else ""
        if len(rest) == len(others):
            why_this = ("the only strategy that fits" if not any(e["fits"] for e in others)
                        else "the only strategy that fits and trains here")
        elif all(round(e["relative_speed"], 2) <= 1.0 for e in others if e["fits"]):
            why_this = "nothing that fits is faster, and it keeps the most memory free"
        else:
            why_this = "the fastest that fits"
        return f"{lead}: {why_this}, {free}{tail}."
    return f"{lead}: {c['relative_speed']:.2f}x device_map's speed, {free}."
