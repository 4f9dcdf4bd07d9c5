"""plan_memory: the per-GPU memory of a LoRA training step under each strategy, the chosen
one's numbers (and device map, for device_map), and what fits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from workbench.planner import terms
from workbench.planner.compare import choice_sentence, choose, device_rows, entry, sharded_entries
from workbench.planner.device_map import Step, accelerate_auto_map, accelerate_map, evaluate, pack, weight_budgets
from workbench.planner.layout import Layout
# layout_for and step_for stay importable from here: tests and benchmarks/planner_accuracy.py use them.
from workbench.planner.request import PlanRequest, check_against_model, layout_for, step_for
from workbench.planner.search import balanced_headroom, largest_fitting
from workbench.planner.speed import links_for
from workbench.planner.strategies import strategy as strategy_model
from workbench.planner.suggest import strategy_switches, suggestions


@dataclass
class Plan:
    request: PlanRequest
    fits: bool
    devices: list[dict]
    device_map: dict | None
    max_length_that_fits: int | None
    max_batch_size_that_fits: int | None
    suggestions: list[dict]
    accelerate_auto: dict
    plan_seconds: float
    map_source: str = "accelerate"
    notes: list[str] = field(default_factory=list)
    strategy: str = "device_map"
    strategies: list[dict] = field(default_factory=list)
    choice: str = ""
    offloaded: list[str] = field(default_factory=list)
    speed_inputs: dict = field(default_factory=dict)
    max_video_frames_that_fits: int | None = None
    video_row_tokens: int | None = None  # the row length at that frame count (the same text)

    def to_json(self) -> dict:
        """The CLI/UI contract: today's fields for the chosen strategy (device_map is null for
        ddp/fsdp, where each process loads onto its own GPU), plus strategy, choice,
        strategies and the speed model's inputs."""
        return {"fits": self.fits, "devices": self.devices, "device_map": self.device_map,
                "max_length_that_fits": self.max_length_that_fits, "suggestions": self.suggestions,
                "accelerate_auto": self.accelerate_auto, "plan_seconds": round(self.plan_seconds, 4),
                "strategy": self.strategy, "choice": self.choice, "strategies": self.strategies,
                "nodes": self.request.nodes, "speed_inputs": self.speed_inputs,
                "max_video_frames_that_fits": self.max_video_frames_that_fits,
                "video_row_tokens": self.video_row_tokens}

    def entry(self, name: str) -> dict:
        return next(e for e in self.strategies if e["name"] == name)


def plan_memory(request: PlanRequest) -> Plan:
    """Plan one LoRA training step on ``request.gpus`` (per node) for every strategy.

    ``plan_seconds`` counts the planning itself; importing torch/transformers/accelerate
    (about 3 s once per process) happens before the clock starts.
    """
    request.check()
    import_backends()
    started = time.perf_counter()
    layout = layout_for(request)
    check_against_model(request, layout)
    step = step_for(request, layout, "cpu" if request.on_cpu else "cuda")
    caps = [g.total_bytes for g in request.gpus]
    links = links_for(request.gpus, request.intra_node_gbps, request.inter_node_gbps)
    notes: list[str] = []

    device_map, source = planned_map(layout, step, caps, notes)
    rows, offloaded = evaluate(layout, device_map, step, len(caps))
    map_devices = device_rows(rows, caps)
    entries = [entry("device_map", map_devices, _fits(rows, offloaded, caps), layout, step, request, links, offloaded)]
    entries[0]["device_map"] = device_map  # kept whichever strategy is chosen: the tab can switch to it
    if request.on_cpu:  # one process in host memory: nothing to spread, replicate or shard
        _on_the_cpu(entries[0])
    else:
        entries += sharded_entries(layout, step, request, links)
    chosen = "device_map" if request.on_cpu else choose(entries) if request.strategy == "auto" else request.strategy
    picked = next(e for e in entries if e["name"] == chosen)
    model = strategy_model(chosen, request.nodes)

    if chosen == "device_map" and offloaded:
        notes.append(f"{len(offloaded)} module(s) do not fit on the GPUs (first: {offloaded[0]}).")
    max_len = largest_fitting(lambda n: model.fits(layout, replace(step, max_length=n), caps),
                              request.visual_tokens(layout) + 1, layout.shape.max_positions)
    max_batch = largest_fitting(lambda b: model.fits(layout, replace(step, batch_size=b), caps), 1, 256)
    max_frames, frames_row = largest_video(request, layout, step, caps, model)
    suggested = []
    if request.on_cpu:
        device_map = {name: "cpu" for name in device_map}
    if not picked["fits"]:
        suggested = suggestions(request, layout, step, caps, model)
        if request.strategy != "auto":
            suggested = strategy_switches(entries, chosen) + suggested
    return Plan(request=request, fits=picked["fits"], devices=picked["devices"],
                device_map=device_map if chosen == "device_map" else None,
                max_length_that_fits=max_len, max_batch_size_that_fits=max_batch, suggestions=suggested,
                accelerate_auto=ON_CPU_AUTO if request.on_cpu else accelerate_auto(layout, step, caps), plan_seconds=time.perf_counter() - started,
                map_source=source, notes=notes, strategy=chosen, strategies=entries,
                choice=("device_map on this machine's CPU (no GPU here): one process, the whole model in its memory."
                        if request.on_cpu else choice_sentence(chosen, entries, request.strategy)),
                offloaded=list(offloaded) if chosen == "device_map" else [], speed_inputs=links.to_json(),
                max_video_frames_that_fits=max_frames, video_row_tokens=frames_row)


def largest_video(request: PlanRequest, layout: Layout, step: Step, caps: list[int], model) -> tuple:
    """(frames, row tokens): the most video frames a row can hold while the step fits, the row's text
    staying as it is (max_length less the visual tokens) so the row grows by each frame pair's tokens;
    (None, None) without a video or when not even one frame pair fits."""
    per_group = step.video_tokens_per_group
    if not request.video_frames or not per_group:
        return None, None
    text = step.max_length - request.visual_tokens(layout)
    others = request.visual_tokens(layout, video_frames=0)

    def row(groups: int) -> int:
        return text + others + groups * per_group

    most = (layout.shape.max_positions - text - others) // per_group
    groups = largest_fitting(lambda g: model.fits(layout, replace(step, video_groups=g, max_length=row(g)), caps),
                             1, most)
    if not groups:
        return None, None
    return groups * layout.shape.temporal_patch, row(groups)


ON_CPU_AUTO = {"fits": True, "out_of_memory": [], "offloaded": [], "devices": [], "device_map": {},
               "summary": "not compared: on the CPU the whole model is in one memory."}


def _on_the_cpu(entry: dict) -> None:
    for device in entry["devices"]:
        device["device"] = "cpu"
    entry["device_map"] = {name: "cpu" for name in entry.get("device_map") or {}}
    entry["why"] = ("One process on this machine's CPU, in its memory (no GPU here)." if entry["fits"] else
                    entry["why"].replace("One process on the one GPU", "One process on this machine's CPU"))


def import_backends() -> None:
    import accelerate.utils  # noqa: F401
    import transformers.integrations.accelerate  # noqa: F401
    import transformers.modeling_utils  # noqa: F401


def planned_map(layout: Layout, step: Step, caps: list[int], notes: list[str]) -> tuple[dict, str]:
    """accelerate's map under budgets = capacity - the packer's non-weight needs per GPU.

    The packer runs against capacity minus the balanced headroom, so the map leaves
    about the same free memory on every GPU.

    The budgets are weight-only, so accelerate may add one more layer where the weight
    slack allows it but that layer's own LoRA and activation bytes do not: then that
    GPU's budget drops below the weights accelerate put there (four tries). If it still
    does not fit where the packer's map does, the packer's map (same module names, same
    no-split units) is used and a note says so.
    """
    headroom = balanced_headroom(layout, step, caps)
    packed, packed_fits = pack(layout, step, [c - headroom for c in caps])
    if any(u.dequant_numel for u in layout.units):
        # accelerate would size the quantised layers as if they were in the model dtype
        notes.append("quantised base: the planner's own sequential map (accelerate sizes layers in the model dtype).")
        return packed, "planner"
    budgets = weight_budgets(layout, step, {k: v for k, v in packed.items() if v != "cpu"},
                             [c - headroom for c in caps])
    amap = accelerate_map(layout, budgets)
    for _ in range(4):
        rows, offloaded = evaluate(layout, amap, step, len(caps))
        if _fits(rows, offloaded, caps) or not packed_fits:
            return amap, "accelerate"
        over = [r["total_bytes"] > c for r, c in zip(rows, caps)]
        if not any(over):
            break
        budgets = [min(b, r["weights_bytes"] - 1) if o else b for b, r, o in zip(budgets, rows, over)]
        amap = accelerate_map(layout, budgets)
    rows, offloaded = evaluate(layout, amap, step, len(caps))
    if _fits(rows, offloaded, caps):
        return amap, "accelerate"
    notes.append("accelerate's greedy fill could not reproduce a fitting map; using the planner's own "
                 "sequential map (same modules, same no-split layers).")
    return packed, "planner"


def _fits(rows: list[dict], offloaded: list[str], caps: list[int]) -> bool:
    return not offloaded and all(r["total_bytes"] <= c for r, c in zip(rows, caps))


def accelerate_auto(layout: Layout, step: Step, caps: list[int]) -> dict:
    """``device_map="auto"`` for the same GPUs, judged by the same memory model."""
    if any(u.dequant_numel for u in layout.units):
        return {"fits": False, "out_of_memory": [], "offloaded": [], "devices": [], "device_map": {},
                "summary": "not compared for a quantised base: transformers sizes its layers through bitsandbytes, "
                           "which this comparison (layers sized in the model dtype) does not model."}
    amap = accelerate_auto_map(layout, caps)
    rows, offloaded = evaluate(layout, amap, step, len(caps))
    devices = device_rows(rows, caps)
    oom = [d["device"] for d in devices if d["total_bytes"] > d["capacity_bytes"]]
    fits = not oom and not offloaded
    if fits:
        summary = "device_map='auto' also fits under this memory model."
    elif oom:
        worst = max((d for d in devices if d["device"] in oom), key=lambda d: d["total_bytes"] - d["capacity_bytes"])
        summary = (f"device_map='auto' balances weights only: {worst['device']} would need "
                   f"{worst['total_bytes'] / terms.GIB:.1f} GiB of {worst['capacity_bytes'] / terms.GIB:.1f} GiB "
                   f"(logits {worst['logits_bytes'] / terms.GIB:.1f} GiB, activations "
                   f"{worst['activation_bytes'] / terms.GIB:.1f} GiB) and run out of memory.")
    else:
        summary = f"device_map='auto' offloads {len(offloaded)} module(s) to the CPU, which LoRA training cannot use efficiently."
    return {"fits": fits, "out_of_memory": oom, "offloaded": offloaded, "devices": devices,
            "device_map": amap, "summary": summary}
