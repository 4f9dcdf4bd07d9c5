"""What a plan depends on (``PlanRequest``, whose field defaults are the planner's defaults for
the CLI and the Memory planner tab alike) and what it derives from it: the model's layout and
the shape of one training step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.errors import UserError
from workbench.hardware import Gpu
from workbench.planner import terms
from workbench.planner.device_map import Step
from workbench.planner.layout import Layout, build_layout

DTYPE_NAMES = {"auto": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
               "fp32": "fp32", "float32": "fp32"}
STRATEGIES = ("auto", "device_map", "ddp", "fsdp")
# No real LoRA step runs more rows than this on one device; a larger value is a typo.
MAX_BATCH_SIZE = 1024
MAX_NODES = 1024
# One 200 Gb/s InfiniBand HDR port per node: what many small clusters have between nodes.
DEFAULT_INTER_NODE_GBPS = 25.0


@dataclass
class PlanRequest:
    """Everything the plan depends on. Sizes are validated by ``check``.

    ``gpus`` describes one node; ``nodes`` such nodes take part in ddp/fsdp (device_map
    always runs in one process on one node). Link bandwidths are in GB/s; None takes the
    intra-node figure from the GPUs' card (PCIe for unnamed sizes). ``trained_tokens``: the
    answer tokens of a row, as the dataset's statistics measured them (p95 or max); 0 when
    unknown, and then every token of a row counts as trained (the upper bound).
    """

    model: str
    gpus: list[Gpu]
    dtype: str = "bf16"
    lora_rank: int = 8
    lora_targets: str | list = "language-all-linear"
    lora_dropout: float = 0.05
    # what trains (workbench.settings.LoraSettings: recipe, then each part frozen | lora | full; empty: as
    # the recipe, or without one as lora_targets, says)
    recipe: str = ""
    vision: str = ""
    merger: str = ""
    language: str = ""
    batch_size: int = 1
    max_length: int = 2048
    max_pixels: int = 1003520
    min_pixels: int = 3136
    images_per_sample: int = 1
    gradient_checkpointing: bool = True
    quantization: str = "none"
    loss_on_trained_tokens_only: bool = True
    trained_tokens: int = 0
    packing: bool = False  # data.packing: each batch item is a sequence of max_length tokens holding several rows
    strategy: str = "auto"
    nodes: int = 1
    intra_node_gbps: float | None = None
    inter_node_gbps: float = DEFAULT_INTER_NODE_GBPS

    @classmethod
    def from_run_config(cls, cfg, gpus: list[Gpu], images_per_sample: int = 1) -> "PlanRequest":
        """The request for a ``workbench.settings.RunConfig`` on ``gpus``."""
        return cls(model=cfg.model.name_or_path, gpus=list(gpus), dtype=cfg.model.dtype,
                   lora_rank=cfg.lora.rank, lora_targets=cfg.lora.target_modules, lora_dropout=cfg.lora.dropout,
                   recipe=cfg.lora.recipe, vision=cfg.lora.vision, merger=cfg.lora.merger, language=cfg.lora.language,
                   batch_size=cfg.training.per_device_train_batch_size, max_length=cfg.data.max_length,
                   max_pixels=cfg.data.max_pixels, min_pixels=cfg.data.min_pixels,
                   images_per_sample=images_per_sample,
                   gradient_checkpointing=cfg.training.gradient_checkpointing,
                   quantization=cfg.model.quantization,
                   loss_on_trained_tokens_only=cfg.training.loss_on_trained_tokens_only,
                   trained_tokens=cfg.data.trained_tokens, packing=cfg.data.packing, strategy=cfg.training.strategy, nodes=cfg.training.nodes)

    def check(self) -> None:
        if not self.gpus:
            raise UserError("No GPUs to plan for: pass --gpus like 4x40GiB (none were detected on this machine).")
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"dtype '{self.dtype}' is not one of bf16, fp16, fp32.")
        for name in ("lora_rank", "batch_size", "max_length", "max_pixels", "min_pixels", "nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive whole number, got {value!r}.")
        if self.batch_size > MAX_BATCH_SIZE:
            raise UserError(f"batch-size {self.batch_size} is not a per-GPU batch (over {MAX_BATCH_SIZE}): use "
                            "gradient accumulation for a large effective batch.")
        if self.nodes > MAX_NODES:
            raise UserError(f"nodes {self.nodes} is more than {MAX_NODES}: check the number.")
        if isinstance(self.images_per_sample, bool) or not isinstance(self.images_per_sample, int) or self.images_per_sample < 0:
            raise UserError(f"images-per-sample must be 0 or more, got {self.images_per_sample!r}.")
        if self.min_pixels > self.max_pixels:
            raise UserError(f"min-pixels ({self.min_pixels}) is larger than max-pixels ({self.max_pixels}).")
        if self.quantization not in terms.QUANTIZATIONS:
            raise UserError(f"quantization '{self.quantization}' is not one of {', '.join(terms.QUANTIZATIONS)}.")
        if isinstance(self.trained_tokens, bool) or not isinstance(self.trained_tokens, int) or self.trained_tokens < 0:
            raise UserError(f"trained-tokens must be 0 (unknown: every token) or a positive whole number, got "
                            f"{self.trained_tokens!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"LoRA dropout {self.lora_dropout} is outside [0, 1).")
        if self.strategy not in STRATEGIES:
            raise UserError(f"strategy '{self.strategy}' is unknown: use {', '.join(STRATEGIES)}.")
        for name in ("intra_node_gbps", "inter_node_gbps"):
            value = getattr(self, name)
            if value is None and name == "intra_node_gbps":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e5:
                raise UserError(f"{name.replace('_', '-')} must be a bandwidth in GB/s between 0 and 100000, "
                                f"got {value!r}.")

    def parts(self):
        """The LoraSettings of what trains (targets, recipe, parts): one reading, the training's own."""
        from workbench.settings import LoraSettings

        settings = LoraSettings(target_modules=self.lora_targets, recipe=self.recipe, vision=self.vision,
                                merger=self.merger, language=self.language)
        try:
            from workbench.config_rules import check_parts

            check_parts(settings, 1e-4)
        except UserError as exc:  # the settings' sentence, in the flags' names
            raise UserError(str(exc).replace("lora.", "--").replace("_lr", "-lr")) from None
        return settings

    def visual_tokens(self, layout: Layout) -> int:
        """Image tokens in one row: images x max_pixels // (pixels per token)^2 (784 for Qwen2-VL, 1024 Qwen3-VL)."""
        per_image = terms.visual_tokens_per_image(self.max_pixels, layout.shape.pixels_per_token)
        return self.images_per_sample * per_image if self.images_per_sample else 0


def request_defaults() -> dict:
    """The defaults of every optional PlanRequest field: the one set both the CLI and the tab use."""
    return {f.name: f.default for f in dataclasses.fields(PlanRequest) if f.default is not dataclasses.MISSING}


def resolve_targets(targets, family=None):
    """A settings preset name -> ``family``'s regex (Qwen2-VL's when None); a regex or a list passes through."""
    from workbench.settings import target_modules_for

    return target_modules_for(targets, family)


def layout_for(request: PlanRequest, quantization: str | None = None) -> Layout:
    from workbench.models import family_of, load_model_config

    from workbench.training.parts import lora_targets

    config = load_model_config(request.model)
    kind = request.quantization if quantization is None else quantization
    settings = request.parts()
    targets = lora_targets(settings, family_of(config))
    full = tuple(part for part, mode in settings.parts().items() if mode == "full")
    return build_layout(config, DTYPE_NAMES[request.dtype], targets, request.lora_rank, kind, full)


def trained_tokens_per_row(request: PlanRequest) -> int | None:
    """Tokens per row whose logits the loss computes: None for the model's own loss (every
    position), else the measured answer tokens, or the whole row when not measured."""
    if not request.loss_on_trained_tokens_only:
        return None
    return min(request.trained_tokens or request.max_length, request.max_length)


def rows_per_item(request: PlanRequest, layout: Layout) -> int:
    """Rows in one packed sequence, at most: max_length over the shortest row the request allows
    (its visual tokens plus its measured answer); 1 without packing. An upper bound, so the images
    and trained tokens of a sequence are never under-counted (each stays capped at max_length)."""
    if not request.packing:
        return 1
    shortest = request.visual_tokens(layout) + max(1, request.trained_tokens)
    return max(1, request.max_length // shortest)


def step_for(request: PlanRequest, layout: Layout, device_kind: str = "cuda") -> Step:
    return Step(rows_per_item=rows_per_item(request, layout), batch_size=request.batch_size, max_length=request.max_length,
                images_per_sample=request.images_per_sample,
                visual_tokens_per_image=terms.visual_tokens_per_image(request.max_pixels, layout.shape.pixels_per_token),
                gradient_checkpointing=request.gradient_checkpointing, lora_rank=request.lora_rank,
                lora_dropout=request.lora_dropout > 0, device_kind=device_kind,
                act_bytes=4 if layout.dtype == "fp32" else 2, trained_tokens=trained_tokens_per_row(request))


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
    visual = request.visual_tokens(layout)
    if visual >= request.max_length:
        raise UserError(f"{request.images_per_sample} image(s) at max-pixels {request.max_pixels} take "
                        f"{visual} tokens, not less than max-length {request.max_length}: raise "
                        "max-length or lower max-pixels.")


def parse_targets(text: str):
    """A preset or regex stays a string; 'a,b,c' becomes a list of module names."""
    text = text.strip()
    if "," in text and not any(ch in text for ch in "*.()|[]\\"):
        return [t.strip() for t in text.split(",") if t.strip()]
    return text
