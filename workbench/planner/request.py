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
# qwen-vl-utils' per-frame ceiling (VIDEO_MAX_TOKEN_NUM): 768 tokens, 768 x 28 x 28 pixels for Qwen2-VL and
# Qwen2.5-VL, 768 x 32 x 32 for Qwen3-VL; a video_max_pixels of 0 plans with it.
VIDEO_MAX_TOKENS_PER_FRAME = 768
# One 200 Gb/s InfiniBand HDR port per node: what many small clusters have between nodes.
DEFAULT_INTER_NODE_GBPS = 25.0


@dataclass
class PlanRequest:
    """Everything the plan depends on. Sizes are validated by ``check``.

    ``gpus`` describes one node; ``nodes`` such nodes take part in ddp/fsdp (device_map
    always runs in one process on one node). Link bandwidths are in GB/s; None takes the
    intra-node figure from the GPUs' card (PCIe for unnamed sizes). ``trained_tokens``: the
    answer tokens of a row, as the dataset's statistics measured them (p95 or max); 0 when
    unknown, and then every token of a row counts as trained (the upper bound). ``max_length``
    holds a row's text and its visual tokens, a video's included.
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
    # one video per row of this many sampled frames (0: no video), each resized to at most video_max_pixels
    # (0: qwen-vl-utils' default, VIDEO_MAX_TOKENS_PER_FRAME tokens)
    video_frames: int = 0
    video_max_pixels: int = 0
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
        """The request for a ``workbench.settings.RunConfig`` on ``gpus`` (``to_plan_request``)."""
        return to_plan_request(cfg, gpus, images_per_sample)

    def fields(self) -> dict:
        """The request as plain values (what the Memory planner tab keeps of a plan): the GPUs as their count."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "gpus"}
        return {**values, "gpus_per_node": len(self.gpus), "on_cpu": self.on_cpu}

    def check(self) -> None:
        if not self.gpus:
            raise UserError("No GPUs to plan for: pass --gpus like 4x40GiB (none were detected on this machine).")
        if self.on_cpu and (len(self.gpus) > 1 or self.nodes > 1):
            raise UserError("A plan on the CPU is one process on this machine: give --gpus cpu alone, with nodes 1.")
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
        for name in ("video_frames", "video_max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name.replace('_', '-')} must be 0 or a positive whole number, got {value!r}.")
        if 0 < self.video_max_pixels < self.min_pixels:
            raise UserError(f"video-max-pixels ({self.video_max_pixels}) is smaller than min-pixels "
                            f"({self.min_pixels}): raise video-max-pixels.")
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

    @property
    def weight_dtype(self) -> str:
        """bf16, fp16 or fp32: 'auto' is what training picks, fp32 on the CPU and bf16 on GPUs."""
        return "fp32" if self.dtype == "auto" and self.on_cpu else DTYPE_NAMES[self.dtype]

    @property
    def on_cpu(self) -> bool:
        """A plan for this machine's CPU (no GPU): one process in host memory."""
        return any(g.is_cpu for g in self.gpus)

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

    def visual_tokens(self, layout: Layout, video_frames: int | None = None) -> int:
        """Image and video tokens in one row: images x max_pixels // (pixels per token)^2 (784 for Qwen2-VL,
        1024 Qwen3-VL) + ceil(frames / 2) x one frame's tokens."""
        per_image = terms.visual_tokens_per_image(self.max_pixels, layout.shape.pixels_per_token)
        images = self.images_per_sample * per_image if self.images_per_sample else 0
        frames = self.video_frames if video_frames is None else video_frames
        return images + terms.video_groups(frames, layout.shape.temporal_patch) * self.video_tokens_per_group(layout)

    def video_pixels(self, layout: Layout) -> int:
        """A frame's largest area: video_max_pixels, or qwen-vl-utils' default for this family."""
        return self.video_max_pixels or VIDEO_MAX_TOKENS_PER_FRAME * layout.shape.pixels_per_token**2

    def video_tokens_per_group(self, layout: Layout) -> int:
        """Tokens of one temporal patch (2 frames): one frame's h x w tokens at its largest area."""
        return terms.visual_tokens_per_image(self.video_pixels(layout), layout.shape.pixels_per_token) \
            if self.video_frames else 0


# The settings a plan depends on, in both directions: (RunConfig section, its field, the PlanRequest field).
# A row whose RunConfig field does not exist (yet) is skipped.
CONFIG_FIELDS = (("model", "name_or_path", "model"), ("model", "dtype", "dtype"), ("model", "quantization", "quantization"),
                 ("lora", "rank", "lora_rank"), ("lora", "target_modules", "lora_targets"),
                 ("lora", "dropout", "lora_dropout"), ("lora", "recipe", "recipe"), ("lora", "vision", "vision"),
                 ("lora", "merger", "merger"), ("lora", "language", "language"),
                 ("training", "per_device_train_batch_size", "batch_size"), ("data", "max_length", "max_length"),
                 ("data", "max_pixels", "max_pixels"), ("data", "min_pixels", "min_pixels"),
                 ("data", "video_frames", "video_frames"), ("data", "video_max_pixels", "video_max_pixels"),
                 ("training", "gradient_checkpointing", "gradient_checkpointing"),
                 ("training", "loss_on_trained_tokens_only", "loss_on_trained_tokens_only"),
                 ("data", "trained_tokens", "trained_tokens"), ("data", "packing", "packing"),
                 ("training", "strategy", "strategy"),
                 ("training", "nodes", "nodes"))
# What "Use this plan" writes back: not the dropout (the planner's form has no box for it, so a plan would
# reset the run's own), and the strategy and nodes as the plan chose them (``with_plan``).
NOT_WRITTEN_BACK = ("lora_dropout", "strategy", "nodes")


def _config_fields(cfg) -> list[tuple[str, str, str]]:
    return [row for row in CONFIG_FIELDS if hasattr(getattr(cfg, row[0]), row[1])]


def to_plan_request(cfg, gpus: list[Gpu], images_per_sample: int = 1) -> PlanRequest:
    """The request for a ``workbench.settings.RunConfig`` on ``gpus``."""
    values = {request: getattr(getattr(cfg, section), name) for section, name, request in _config_fields(cfg)}
    return PlanRequest(gpus=list(gpus), images_per_sample=images_per_sample, **values)


def with_plan(cfg, request: dict, strategy: str, device_map: dict | None = None):
    """``cfg`` (a RunConfig) with the settings a plan was made with (``request``: ``PlanRequest.fields()``)
    and its strategy: the node count and processes for ddp/fsdp, the map for device_map on GPUs. What the
    plan does not depend on stays as the user set it. Raises UserError when the result is not a valid config."""
    from workbench.settings import RunConfig

    raw = cfg.to_dict()
    for section, name, source in _config_fields(cfg):
        if source not in NOT_WRITTEN_BACK and source in request:
            raw[section][name] = request[source]
    on_cpu = request.get("on_cpu", False)
    # on the CPU the whole model is on the one device: training's own {"": "cpu"}
    raw["model"]["device_map"] = dict(device_map) if strategy == "device_map" and device_map and not on_cpu else None
    raw["training"]["strategy"] = strategy
    raw["training"]["nodes"] = request["nodes"] if strategy != "device_map" else 1
    # device_map is one process whatever the GPU count; ddp/fsdp start one process per GPU.
    raw["training"]["nproc_per_node"] = request["gpus_per_node"] if strategy != "device_map" else 0
    return RunConfig.from_dict(raw)


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
    return build_layout(config, request.weight_dtype, targets, request.lora_rank, kind, full)


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
                act_bytes=4 if layout.dtype == "fp32" else 2, trained_tokens=trained_tokens_per_row(request),
                video_groups=terms.video_groups(request.video_frames, layout.shape.temporal_patch),
                video_tokens_per_group=request.video_tokens_per_group(layout))


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
        what = f"{request.images_per_sample} image(s) at max-pixels {request.max_pixels}"
        if request.video_frames:
            what += (f" and a video of {request.video_frames} frames at video-max-pixels "
                     f"{request.video_pixels(layout)}")
        raise UserError(f"{what} take {visual} tokens, not less than max-length {request.max_length}: raise "
                        f"max-length to {visual} plus the row's text, or lower "
                        f"{'video-frames, video-max-pixels or ' if request.video_frames else ''}max-pixels.")


def parse_targets(text: str):
    """A preset or regex stays a string; 'a,b,c' becomes a list of module names."""
    text = text.strip()
    if "," in text and not any(ch in text for ch in "*.()|[]\\"):
        return [t.strip() for t in text.split(",") if t.strip()]
    return text
