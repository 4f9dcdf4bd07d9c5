"""plan_memory: the per-GPU memory of a LoRA training step, its device map, and what fits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from workbench.errors import UserError
from workbench.hardware import Gpu
from workbench.planner import terms
from workbench.planner.device_map import (HUGE, Step, accelerate_auto_map, accelerate_map, evaluate, pack,
                                          weight_budgets)
from workbench.planner.layout import Layout, build_layout

DTYPE_NAMES = {"auto": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
               "fp32": "fp32", "float32": "fp32"}
LARGER_GPUS_GIB = (24, 32, 40, 48, 64, 80, 94, 141, 192)
# No real LoRA step runs more rows than this on one device; a larger value is a typo.
MAX_BATCH_SIZE = 1024


@dataclass
class PlanRequest:
    """Everything the plan depends on. Sizes are validated by ``check``."""

    model: str
    gpus: list[Gpu]
    dtype: str = "bf16"
    lora_rank: int = 8
    lora_targets: str | list = "language-all-linear"
    lora_dropout: float = 0.05
    batch_size: int = 1
    max_length: int = 2048
    max_pixels: int = 1003520
    min_pixels: int = 3136
    images_per_sample: int = 1
    gradient_checkpointing: bool = True
    quantize_4bit: bool = False

    @classmethod
    def from_run_config(cls, cfg, gpus: list[Gpu], images_per_sample: int = 1) -> "PlanRequest":
        """The request for a ``workbench.settings.RunConfig`` on ``gpus``."""
        return cls(model=cfg.model.name_or_path, gpus=list(gpus), dtype=cfg.model.dtype,
                   lora_rank=cfg.lora.rank, lora_targets=cfg.lora.target_modules, lora_dropout=cfg.lora.dropout,
                   batch_size=cfg.training.per_device_train_batch_size, max_length=cfg.data.max_length,
                   max_pixels=cfg.data.max_pixels, min_pixels=cfg.data.min_pixels,
                   images_per_sample=images_per_sample,
                   gradient_checkpointing=cfg.training.gradient_checkpointing)

    def check(self) -> None:
        if not self.gpus:
            raise UserError("No GPUs to plan for: pass --gpus like 4x40GiB (none were detected on this machine).")
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"dtype '{self.dtype}' is not one of bf16, fp16, fp32.")
        for name in ("lora_rank", "batch_size", "max_length", "max_pixels", "min_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive whole number, got {value!r}.")
        if self.batch_size > MAX_BATCH_SIZE:
            raise UserError(f"batch-size {self.batch_size} is not a per-GPU batch (over {MAX_BATCH_SIZE}): use "
                            "gradient accumulation for a large effective batch.")
        if isinstance(self.images_per_sample, bool) or not isinstance(self.images_per_sample, int) or self.images_per_sample < 0:
            raise UserError(f"images-per-sample must be 0 or more, got {self.images_per_sample!r}.")
        if self.min_pixels > self.max_pixels:
            raise UserError(f"min-pixels ({self.min_pixels}) is larger than max-pixels ({self.max_pixels}).")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"LoRA dropout {self.lora_dropout} is outside [0, 1).")

    @property
    def visual_tokens(self) -> int:
        """Image tokens in one row: images x max_pixels // 784."""
        return self.images_per_sample * terms.visual_tokens_per_image(self.max_pixels) if self.images_per_sample else 0


@dataclass
class Plan:
    request: PlanRequest
    fits: bool
    devices: list[dict]
    device_map: dict
    max_length_that_fits: int | None
    max_batch_size_that_fits: int | None
    suggestions: list[dict]
    accelerate_auto: dict
    plan_seconds: float
    map_source: str = "accelerate"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The CLI/UI contract: fits, devices, device_map, max_length_that_fits, suggestions,
        accelerate_auto, plan_seconds."""
        return {"fits": self.fits, "devices": self.devices, "device_map": self.device_map,
                "max_length_that_fits": self.max_length_that_fits, "suggestions": self.suggestions,
                "accelerate_auto": self.accelerate_auto, "plan_seconds": round(self.plan_seconds, 4)}


def resolve_targets(targets):
    """A settings preset name -> its regex; a regex or a list passes through."""
    from workbench.settings import TARGET_PRESETS

    if isinstance(targets, str) and targets in TARGET_PRESETS:
        return TARGET_PRESETS[targets]
    if isinstance(targets, (list, tuple)):
        return list(targets)
    return targets


def layout_for(request: PlanRequest, quantize_4bit: bool | None = None) -> Layout:
    from workbench.models import load_model_config

    config = load_model_config(request.model)
    q4 = request.quantize_4bit if quantize_4bit is None else quantize_4bit
    return build_layout(config, DTYPE_NAMES[request.dtype], resolve_targets(request.lora_targets), request.lora_rank, q4)


def step_for(request: PlanRequest, layout: Layout, device_kind: str = "cuda") -> Step:
    return Step(batch_size=request.batch_size, max_length=request.max_length,
                images_per_sample=request.images_per_sample,
                visual_tokens_per_image=terms.visual_tokens_per_image(request.max_pixels),
                gradient_checkpointing=request.gradient_checkpointing, lora_rank=request.lora_rank,
                lora_dropout=request.lora_dropout > 0, device_kind=device_kind,
                act_bytes=4 if layout.dtype == "fp32" else 2)


def plan_memory(request: PlanRequest) -> Plan:
    """Plan one LoRA training step on ``request.gpus``; see the package docstring.

    ``plan_seconds`` counts the planning itself; importing torch/transformers/accelerate
    (about 3 s once per process) happens before the clock starts.
    """
    request.check()
    import_backends()
    started = time.perf_counter()
    layout = layout_for(request)
    check_against_model(request, layout)
    if request.visual_tokens >= request.max_length:
        raise UserError(f"{request.images_per_sample} image(s) at max-pixels {request.max_pixels} take "
                        f"{request.visual_tokens} tokens, not less than max-length {request.max_length}: raise "
                        "max-length or lower max-pixels.")
    step = step_for(request, layout)
    caps = [g.total_bytes for g in request.gpus]
    notes: list[str] = []
    device_map, source = planned_map(layout, step, caps, notes)
    rows, offloaded = evaluate(layout, device_map, step, len(caps))
    fits = _fits(rows, offloaded, caps)
    if offloaded:
        notes.append(f"{len(offloaded)} module(s) do not fit on the GPUs (first: {offloaded[0]}).")
    max_len = largest_fitting(lambda n: packs(layout, replace(step, max_length=n), caps),
                              request.visual_tokens + 1, layout.shape.max_positions)
    max_batch = largest_fitting(lambda b: packs(layout, replace(step, batch_size=b), caps), 1, 256)
    from workbench.planner.suggest import suggestions

    suggested = [] if fits else suggestions(request, layout, step, caps)
    auto = accelerate_auto(layout, step, caps)
    return Plan(request=request, fits=fits, devices=device_rows(rows, caps), device_map=device_map,
                max_length_that_fits=max_len, max_batch_size_that_fits=max_batch, suggestions=suggested,
                accelerate_auto=auto, plan_seconds=time.perf_counter() - started, map_source=source, notes=notes)


def check_against_model(request: PlanRequest, layout: Layout) -> None:
    """Settings that only make sense for this model: targets that match, a rank and length it can take."""
    shape = layout.shape
    if not layout.lora_params:
        targets = request.lora_targets if isinstance(request.lora_targets, str) else ",".join(request.lora_targets)
        raise UserError(f"LoRA targets {targets[:80]!r} match no linear layer of {request.model}: use a preset "
                        "(language-all-linear, language-attention, ...) or names such as q_proj,v_proj.")
    if request.lora_rank > shape.hidden:
        raise UserError(f"lora-rank {request.lora_rank} is larger than the model's hidden size {shape.hidden}: "
                        "LoRA ranks are usually 8 to 64.")
    if request.max_length > shape.max_positions:
        raise UserError(f"max-length {request.max_length} is longer than {request.model} can take "
                        f"(max_position_embeddings {shape.max_positions}): lower max-length.")


def import_backends() -> None:
    import accelerate.utils  # noqa: F401
    import transformers.integrations.accelerate  # noqa: F401
    from transformers import Qwen2VLForConditionalGeneration  # noqa: F401


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


def balanced_headroom(layout: Layout, step: Step, caps: list[int]) -> int:
    """The largest free memory every GPU can keep while the step still packs (0 if none).

    Packing against capacity minus this headroom spreads the layers so the GPUs end up
    about equally full, instead of filling the first GPUs to the brim.
    """
    if not packs(layout, step, caps):
        return 0
    low, high = 0, min(caps)
    while high - low > 16 * 1024**2:
        mid = (low + high) // 2
        low, high = (mid, high) if packs(layout, step, [c - mid for c in caps]) else (low, mid)
    return low


def packs(layout: Layout, step: Step, caps: list[int]) -> bool:
    """Does the packer fit this step on these GPUs?"""
    return pack(layout, step, caps)[1]


def need_bytes(layout: Layout, step: Step, caps: list[int]) -> tuple[int, list[dict], bool]:
    """(bytes needed across all GPUs, per-GPU rows, fits) with overflow on a virtual extra GPU."""
    device_map, _ = pack(layout, step, list(caps) + [HUGE])
    rows, _ = evaluate(layout, device_map, step, len(caps) + 1)
    fits = not rows[-1]["total_bytes"] and all(r["total_bytes"] <= c for r, c in zip(rows, caps))
    return sum(r["total_bytes"] for r in rows), rows[:-1] + ([rows[-1]] if rows[-1]["total_bytes"] else []), fits


def largest_fitting(fits, low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n) (fits is monotone), or None."""
    if low > high or not fits(low):
        return None
    if fits(high):
        return high
    good, bad = low, high
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def _fits(rows: list[dict], offloaded: list[str], caps: list[int]) -> bool:
    return not offloaded and all(r["total_bytes"] <= c for r, c in zip(rows, caps))


def device_rows(rows: list[dict], caps: list[int]) -> list[dict]:
    return [{"device": f"cuda:{i}", "capacity_bytes": int(cap), **{k: int(v) for k, v in row.items()}}
            for i, (row, cap) in enumerate(zip(rows, caps))]


def accelerate_auto(layout: Layout, step: Step, caps: list[int]) -> dict:
    """``device_map="auto"`` for the same GPUs, judged by the same memory model."""
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
