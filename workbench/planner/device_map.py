"""Per-device memory of a device map, and the maps themselves.

``DeviceLoad`` sums the terms for the units placed on one device. ``evaluate`` applies it
to any device map (the planner's or accelerate's ``auto``). ``pack`` is the planner's
sequential first-fit in forward order, which knows every term as it places a unit; its
per-device non-weight needs become the weight budgets handed to accelerate's
``infer_auto_device_map`` (``accelerate_map``), so the map users get is accelerate's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.planner import terms
from workbench.planner.layout import Layout, Unit

HUGE = 1 << 50  # "unlimited" host memory for overflow: anything placed there means "does not fit"


@dataclass(frozen=True)
class Step:
    """The shape of one training step."""

    batch_size: int
    max_length: int
    images_per_sample: int
    visual_tokens_per_image: int
    gradient_checkpointing: bool
    lora_rank: int
    lora_dropout: bool = True
    device_kind: str = "cuda"
    act_bytes: int = 2
    trained_tokens: int | None = None  # per row with the trained-token loss; None: the model's own loss
    lm_head_in_forward: bool = False   # FSDP2: the trained-token loss runs lm_head inside the forward
    video_groups: int = 0              # temporal patches (frame pairs) of the video in each row; 0: no video
    video_tokens_per_group: int = 0    # tokens of one temporal patch (one frame's h x w at the video's pixels)
    # data.packing: rows one batch item holds (a sequence of up to max_length tokens); 1 padded
    rows_per_item: int = 1

    @property
    def tokens(self) -> int:
        return self.batch_size * self.max_length

    @property
    def visual_tokens(self) -> int:
        """Image and video tokens the language model sees in the whole batch (packed: never more than the
        sequence)."""
        per_item = self.rows_per_item * self.visual_tokens_per_row
        return self.batch_size * (per_item if self.rows_per_item == 1 else min(per_item, self.max_length))

    @property
    def visual_tokens_per_row(self) -> int:
        return self.images_per_sample * self.visual_tokens_per_image + self.video_groups * self.video_tokens_per_group

    def logits_bytes(self, vocab: int) -> int:
        """The loss's peak on the lm_head device, for the loss this step uses."""
        if self.trained_tokens is None:
            return terms.logits_bytes(self.tokens, vocab)
        trained = self.batch_size * min(self.rows_per_item * min(self.trained_tokens, self.max_length), self.max_length)
        return terms.trained_logits_bytes(trained, vocab, self.lm_head_in_forward)

    def patches(self, merge_size: int) -> int:
        return terms.vision_patches(self.visual_tokens, merge_size)


@dataclass
class DeviceLoad:
    """The units on one device and the memory they need at the step's peak."""

    weights: int = 0
    lora_params: int = 0
    layers: int = 0              # decoder layers here
    layers_saved_sum: int = 0    # bytes autograd saves for them (without checkpointing)
    layers_saved_max: int = 0    # the largest layer's saved bytes (the recompute working set)
    vision_blocks: int = 0
    vision_lora_inputs: tuple = ()
    kinds: set = field(default_factory=set)
    dequant_numel: int = 0       # the largest quantised weight here (elements)

    def add(self, unit: Unit, layout: Layout, step: Step) -> None:
        self.weights += unit.weight_bytes
        self.lora_params += unit.lora_params
        self.kinds.add(unit.kind)
        self.dequant_numel = max(self.dequant_numel, unit.dequant_numel)
        if unit.kind == "layer":
            s = layout.shape
            saved = terms.decoder_layer_saved_bytes(
                step.tokens, s.hidden, s.intermediate, s.q_dim, s.kv_dim, s.heads, list(unit.lora_inputs),
                step.lora_rank, step.lora_dropout, step.device_kind, step.act_bytes, s.qk_norm, s.kv_heads)
            self.layers += 1
            self.layers_saved_sum += saved
            self.layers_saved_max = max(self.layers_saved_max, saved)
        elif unit.kind == "vision_block":
            self.vision_blocks += 1
            if unit.lora_inputs:
                self.vision_lora_inputs = unit.lora_inputs

    def copy(self) -> "DeviceLoad":
        return DeviceLoad(self.weights, self.lora_params, self.layers, self.layers_saved_sum,
                          self.layers_saved_max, self.vision_blocks, self.vision_lora_inputs, set(self.kinds),
                          self.dequant_numel)

    @property
    def used(self) -> bool:
        return bool(self.kinds)

    def breakdown(self, layout: Layout, step: Step, tied_lm_head: bool = False) -> dict:
        """Bytes per term; ``tied_lm_head`` puts the logits here when lm_head shares the embeddings."""
        s, t = layout.shape, step.tokens
        has_lm_head = "lm_head" in self.kinds or (tied_lm_head and "embed" in self.kinds)
        logits = step.logits_bytes(s.vocab) if has_lm_head else 0
        activation = 0
        if self.layers:
            if step.gradient_checkpointing:
                stored = self.layers * terms.checkpoint_boundary_bytes(t, s.hidden, step.act_bytes)
                working = self.layers_saved_max
            else:
                stored = self.layers_saved_sum
                working = 0
            working += terms.layer_backward_transient_bytes(t, s.hidden, s.intermediate)
            # The loss backward finishes (and frees its buffers) before the last layer's
            # recompute starts: on the lm_head device only the excess over the logits counts.
            activation += stored + max(0, working - logits) + terms.rotary_bytes(t, s.head_dim, step.act_bytes)
        if "norm" in self.kinds:
            activation += terms.final_norm_bytes(t, s.hidden)
        if "embed" in self.kinds:
            activation += terms.input_embedding_grad_bytes(t, s.hidden)
        if "vision_in" in self.kinds and step.visual_tokens:
            patches = step.patches(s.merge_size)
            deepstack = terms.deepstack_bytes(step.visual_tokens, s.hidden, s.deepstack_levels, step.act_bytes)
            if layout.vision_trained:
                activation += deepstack + vision_saved_bytes(layout, step)
            else:
                # A frozen tower runs before anything else of the step is alive: it only
                # raises this device's peak where its working set exceeds the rest.
                forward = deepstack + terms.vision_forward_bytes(patches, s.vision_embed, s.vision_mlp, s.patch_values,
                                                                 step.act_bytes, s.vision_mlp_activations)
                activation += max(0, forward - activation - logits)
        lora = terms.lora_state_bytes(self.lora_params)
        dequant = terms.dequantization_bytes(self.dequant_numel, step.act_bytes)
        overhead = terms.overhead_bytes(activation + logits + dequant, step.device_kind) if self.used else 0
        return {"weights_bytes": self.weights, "lora_bytes": lora, "activation_bytes": activation,
                "logits_bytes": logits, "dequant_bytes": dequant, "overhead_bytes": overhead,
                "total_bytes": self.weights + lora + activation + logits + dequant + overhead}


def vision_saved_bytes(layout: Layout, step: Step) -> int:
    """What the vision side keeps for backward: the tower's blocks once the tower trains (a merger trained
    alone is fed by a tower that needs no gradient), and each merger once either trains."""
    s = layout.shape
    if not layout.vision_trained or not step.visual_tokens:
        return 0
    saved = 0
    tower = [u for u in layout.units if u.kind.startswith("vision")]
    if any(u.full for u in tower):
        # a fully trained tower: fp32 weights under autocast keep their inputs and bf16 copies
        saved += terms.full_vision_saved_bytes(
            step.patches(s.merge_size), s.vision_embed, s.vision_mlp, s.vision_heads, s.vision_depth, s.patch_values,
            sum(u.lora_params for u in tower), step.gradient_checkpointing, step.device_kind, step.act_bytes,
            s.vision_mlp_saved)
    elif layout.tower_trained:
        block = next(u for u in layout.units if u.kind == "vision_block")
        saved += terms.vision_trained_bytes(
            step.patches(s.merge_size), s.vision_embed, s.vision_mlp, s.vision_depth, list(block.lora_inputs),
            step.lora_rank, step.gradient_checkpointing, step.device_kind, step.lora_dropout, step.act_bytes,
            s.vision_mlp_saved)
    for merger in (u for u in layout.units if u.kind == "merger"):
        if merger.full:
            saved += terms.full_merger_saved_bytes(step.visual_tokens, s.vision_embed * s.merge_size**2, s.merge_size,
                                                   merger.lora_params, step.device_kind, step.act_bytes)
            continue
        saved += terms.merger_saved_bytes(step.visual_tokens, s.vision_embed * s.merge_size**2,
                                          list(merger.lora_inputs), step.lora_rank, step.device_kind,
                                          step.lora_dropout, step.act_bytes, layout.tower_trained)
    return saved


def device_of(device_map: dict, name: str):
    """The device of module/parameter ``name`` under ``device_map`` (longest dotted prefix)."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in device_map:
            return device_map[key]
    return None


def evaluate(layout: Layout, device_map: dict, step: Step, gpu_count: int) -> tuple[list[dict], list[str]]:
    """Per-GPU breakdowns of ``device_map`` and the units it puts off the GPUs ('cpu'/'disk')."""
    loads = [DeviceLoad() for _ in range(gpu_count)]
    offloaded = []
    for unit in layout.units:
        device = device_of(device_map, unit.name)
        if isinstance(device, int) and 0 <= device < gpu_count:
            loads[device].add(unit, layout, step)
        elif unit.weight_bytes or unit.kind == "lm_head":
            offloaded.append(unit.name)
    return [load.breakdown(layout, step, layout.tied) for load in loads], offloaded


def pack(layout: Layout, step: Step, capacities: list[int]) -> tuple[dict, bool]:
    """Sequential first-fit in forward order, every term included; returns (map, fits).

    A unit goes on the current GPU if that GPU's total (with the unit) stays within its
    capacity, else on the next GPU; what fits nowhere goes to 'cpu' (so: does not fit).
    With tied embeddings lm_head follows embed_tokens.
    """
    loads = [DeviceLoad() for _ in capacities]
    device_map: dict = {}
    current = 0
    fits = True
    for unit in layout.units:
        if unit.kind == "lm_head" and layout.tied:
            device_map[unit.name] = device_map[_embed(layout)]
            continue
        while current < len(capacities):
            trial = loads[current].copy()
            trial.add(unit, layout, step)
            if trial.breakdown(layout, step, layout.tied)["total_bytes"] <= capacities[current] or not _placeable(unit):
                loads[current] = trial
                device_map[unit.name] = current
                break
            current += 1
        else:
            device_map[unit.name] = "cpu"
            fits = False
    return compress(device_map, layout.visual), fits


def _placeable(unit: Unit) -> bool:
    """Units without parameters (rotary tables) never force a move to the next GPU."""
    return unit.weight_bytes > 0 or unit.kind == "lm_head"


def _embed(layout: Layout) -> str:
    return next(u.name for u in layout.units if u.kind == "embed")


def compress(device_map: dict, tower: str = "model.visual") -> dict:
    """Merge the vision tower's entries ('model.visual.*') into one when they share one device."""
    visual = {k: v for k, v in device_map.items() if k.startswith(tower + ".")}
    if visual and len(set(map(str, visual.values()))) == 1:
        merged = {}
        for key, value in device_map.items():
            if key.startswith(tower + "."):
                merged.setdefault(tower, value)
            else:
                merged[key] = value
        return merged
    return dict(device_map)


def weight_budgets(layout: Layout, step: Step, device_map: dict, capacities: list[int]) -> list[int]:
    """Per GPU: capacity minus the non-weight bytes that ``device_map`` puts there."""
    rows, _ = evaluate(layout, device_map, step, len(capacities))
    return [max(0, cap - (row["total_bytes"] - row["weights_bytes"])) for cap, row in zip(capacities, rows)]


def accelerate_map(layout: Layout, budgets: list[int]) -> dict:
    """accelerate's ``infer_auto_device_map`` on the meta model with the given weight budgets.

    accelerate keeps room for the largest layer on GPU 0 (for CPU offload, which training
    does not use), so that reserve is added back to GPU 0's budget. No-split modules and
    tied weights are accelerate's own.
    """
    from accelerate.utils import infer_auto_device_map

    model = _meta_model(layout)
    no_split = list(model._no_split_modules)
    # accelerate's reserve is its largest leaf or no-split module: our largest unit.
    reserve = max(u.weight_bytes for u in layout.units)
    max_memory = {i: int(b) for i, b in enumerate(budgets)}
    if max_memory:
        max_memory[0] += int(reserve)
    max_memory["cpu"] = HUGE
    with _quiet_accelerate():
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=_torch_dtype(layout))
    return dict(device_map)


def accelerate_auto_map(layout: Layout, capacities: list[int]) -> dict:
    """What ``from_pretrained(device_map="auto")`` picks on these GPUs: transformers'
    ``get_balanced_memory`` + ``infer_auto_device_map`` over the free memory (capacity minus
    the CUDA context), weights only."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    model = _meta_model(layout)
    free = {i: int(c - terms.CUDA_CONTEXT_BYTES) for i, c in enumerate(capacities)}
    free["cpu"] = HUGE
    with _quiet_accelerate():
        balanced = get_balanced_memory(model, max_memory=free, no_split_module_classes=model._no_split_modules)
        device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=model._no_split_modules)
    return dict(device_map)


def _meta_model(layout: Layout):
    from workbench.models import build_meta_model, config_from_json

    return build_meta_model(config_from_json(layout.config_json), layout.dtype)


def _torch_dtype(layout: Layout):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[layout.dtype]


class _quiet_accelerate:
    """Silence 'Device N is not available' while planning for GPUs this machine lacks."""

    def __enter__(self):
        import logging

        self._loggers = [logging.getLogger(n) for n in ("accelerate.utils.modeling", "transformers.integrations.accelerate")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)
        return False
