"""What the planner needs to know about a model: its placement units in forward order.

A unit is what a device map places whole: a vision block, the embeddings, a decoder
layer, the final norm, lm_head (accelerate's no-split modules, the family's decoder layer
and vision block, are units). Each unit carries its weight bytes at the plan's dtype
and the LoRA parameters peft would add to it, found by peft's own matching rule on the
module names of a meta model. Module names, the tower's units and its terms come from the
model's family table (``workbench.models.families``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from workbench.errors import UserError
from workbench.planner.terms import lora_parameters, quant_state_bytes, quantized_weight_bytes

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Unit:
    name: str                       # module name, usable as a device_map key
    kind: str                       # vision_in | vision_pos | vision_block | merger | embed | layer | norm | rotary | lm_head
    weight_bytes: int
    lora_params: int                # trainable parameters: LoRA's, plus every weight of a fully trained part
    lora_inputs: tuple[int, ...]    # input widths of the LoRA linears inside
    numel: int = 0                  # parameters (elements) of its weights: the FLOPs of a pass are 2 x this per token
    dequant_numel: int = 0          # its largest quantised weight (elements): dequantised per matmul
    full: bool = False              # every weight trains (its part is trained in full)
    quantized_numel: int = 0        # all its quantised weights (elements): each dequantised once per pass
    quant_state_bytes: int = 0      # their quantisation constants, which FSDP2 does not shard (terms.quant_state_bytes)


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_embed: int
    vision_mlp: int
    vision_depth: int
    patch_values: int
    merge_size: int
    max_positions: int
    # Family terms (workbench.models.families.VisionTerms); the defaults are Qwen2-VL's.
    vision_mlp_activations: int = 2
    vision_mlp_saved: int = 3
    window_patches: int = 0          # patches a windowed vision block attends over; 0: whole image
    full_attention_blocks: int = 0   # vision blocks attending over the whole image
    deepstack_levels: int = 0        # vision features added to the first decoder layers (Qwen3-VL)
    qk_norm: bool = False
    pixels_per_token: int = 28       # side of the pixel square one visual token covers
    vision_heads: int = 16
    temporal_patch: int = 2          # frames one vision patch spans (a video's frame pair)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Layout:
    units: tuple[Unit, ...]
    shape: Shape
    tied: bool
    param_bytes: tuple[tuple[str, int], ...]   # every distinct parameter: (name, bytes)
    config_json: str
    dtype: str
    visual: str = "model.visual"     # the tower's module name (device_map keys start with it)

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, b in self.param_bytes)

    @property
    def lora_params(self) -> int:
        return sum(u.lora_params for u in self.units)

    @property
    def quantized_numel(self) -> int:
        return sum(u.quantized_numel for u in self.units)

    @property
    def quant_state_bytes(self) -> int:
        return sum(u.quant_state_bytes for u in self.units)

    @property
    def vision_trained(self) -> bool:
        return any(u.lora_params for u in self.units if u.kind.startswith("vision") or u.kind == "merger")

    @property
    def tower_trained(self) -> bool:
        """Does the tower itself (patch embedding, blocks) train? Only then do its blocks keep activations:
        a trained merger alone is fed by a tower whose output needs no gradient."""
        return any(u.lora_params for u in self.units if u.kind.startswith("vision"))


def shape_of(config) -> Shape:
    from workbench.models.families import family_of

    family = family_of(config)
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Shape(
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        heads=text.num_attention_heads, kv_heads=text.num_key_value_heads, head_dim=head_dim,
        vocab=text.vocab_size, vision_embed=family.vision_width(vision), vision_mlp=family.vision_mlp_width(vision),
        vision_depth=vision.depth,
        patch_values=vision.in_channels * vision.temporal_patch_size * vision.patch_size**2,
        merge_size=vision.spatial_merge_size, max_positions=text.max_position_embeddings,
        vision_mlp_activations=family.vision.mlp_activations, vision_mlp_saved=family.vision.mlp_saved,
        window_patches=family.vision.window_patches, full_attention_blocks=family.full_attention_blocks(vision),
        deepstack_levels=family.deepstack_levels(vision), qk_norm=family.qk_norm,
        pixels_per_token=family.pixels_per_token, vision_heads=vision.num_heads,
        temporal_patch=vision.temporal_patch_size,
    )


def unit_specs(config) -> list[tuple[str, str]]:
    """(module name, kind) of every unit in forward order, from the family's table."""
    from workbench.models.families import family_of

    family = family_of(config)
    visual, language = family.visual, family.language
    kinds = {"patch_embed": "vision_in", "pos_embed": "vision_pos", "rotary_pos_emb": "rotary"}
    specs = [(f"{visual}.{name}", kinds[name]) for name in family.vision_units_in]
    specs += [(f"{visual}.blocks.{i}", "vision_block") for i in range(config.vision_config.depth)]
    for name in family.vision_units_out:
        levels = range(family.deepstack_levels(config.vision_config)) if "{i}" in name else [None]
        specs += [(f"{visual}.{name.format(i=i)}", "merger") for i in levels]
    specs += [(f"{language}.embed_tokens", "embed")]
    specs += [(f"{language}.layers.{i}", "layer") for i in range(config.text_config.num_hidden_layers)]
    specs += [(f"{language}.norm", "norm"), (f"{language}.rotary_emb", "rotary"), ("lm_head", "lm_head")]
    return specs


def target_matcher(targets):
    """peft's rule: a string is a regex that must fullmatch the module name; a list matches
    names equal to an entry or ending in '.entry'; 'all-linear' is every linear but lm_head."""
    if isinstance(targets, str) and targets == "all-linear":
        return lambda name: name != "lm_head"
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise UserError(f"LoRA targets {targets[:80]!r} are not a valid regular expression ({exc}): use a "
                            "preset, a valid regex, or names such as q_proj,v_proj.") from None
        return lambda name: pattern.fullmatch(name) is not None
    names = tuple(targets)
    return lambda name: any(name == t or name.endswith("." + t) for t in names)


def is_quantized(name: str) -> bool:
    """Which weights model.quantization stores in 4 or 8 bits: the decoder layers' linears
    (workbench.training.loading keeps the vision tower and lm_head in the model dtype)."""
    return ".language_model.layers." in name and name.endswith("proj.weight")


# The part of the model each unit kind belongs to (lora.vision / merger / language: full trains all of it).
PART_OF_KIND = {"vision_in": "vision", "vision_pos": "vision", "vision_block": "vision", "merger": "merger",
                "embed": "language", "layer": "language", "norm": "language"}


def build_layout(config, dtype: str, targets, rank: int, quantization: str = "none", full: tuple = ()) -> Layout:
    """The units of ``config`` (cached on the config's JSON and the other arguments). ``full``: the
    parts trained in full, whose every weight counts as trainable (a fp32 copy beside the frozen
    original, its gradient and AdamW states: the 16 bytes per parameter LoRA's weights cost)."""
    key_targets = targets if isinstance(targets, str) else tuple(targets)
    return _layout(config.to_json_string(use_diff=False), dtype, key_targets, int(rank), quantization,
                   tuple(sorted(full)))


@functools.lru_cache(maxsize=64)
def _layout(config_json: str, dtype: str, targets, rank: int, quantization: str, full: tuple = ()) -> Layout:
    import torch

    from workbench.models import build_meta_model, config_from_json, family_of

    config = config_from_json(config_json)
    model = build_meta_model(config, dtype)
    elem = DTYPE_BYTES[dtype]
    matches = target_matcher(targets)

    param_bytes, param_numel, dequant, state = [], {}, {}, {}
    for name, p in model.named_parameters():
        if quantization != "none" and is_quantized(name):
            param_bytes.append((name, quantized_weight_bytes(quantization, p.numel(), p.shape[0])))
            dequant[name] = p.numel()
            state[name] = quant_state_bytes(quantization, p.numel(), p.shape[0])
        else:
            param_bytes.append((name, p.numel() * elem))
        param_numel[name] = p.numel()

    lora_by_module = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and matches(name):
            lora_by_module[name] = (lora_parameters(module.in_features, module.out_features, rank), module.in_features)

    specs = unit_specs(config)

    by_unit: dict[str, int] = {}
    numel_by_unit: dict[str, int] = {}
    dequant_by_unit: dict[str, int] = {}
    quantized_by_unit: dict[str, int] = {}
    state_by_unit: dict[str, int] = {}
    prefixes = {name for name, _ in specs}
    for name, nbytes in param_bytes:
        owner = _owner(name, prefixes)
        by_unit[owner] = by_unit.get(owner, 0) + nbytes
        numel_by_unit[owner] = numel_by_unit.get(owner, 0) + param_numel[name]
        dequant_by_unit[owner] = max(dequant_by_unit.get(owner, 0), dequant.get(name, 0))
        quantized_by_unit[owner] = quantized_by_unit.get(owner, 0) + dequant.get(name, 0)
        state_by_unit[owner] = state_by_unit.get(owner, 0) + state.get(name, 0)
    lora_units: dict[str, list] = {}
    for name, (params, d_in) in lora_by_module.items():
        lora_units.setdefault(_owner(name, prefixes), []).append((params, d_in))

    units = tuple(
        Unit(name, kind, by_unit.get(name, 0), sum(p for p, _ in lora_units.get(name, []))
             + (numel_by_unit.get(name, 0) if PART_OF_KIND.get(kind) in full else 0),
             tuple(d for _, d in lora_units.get(name, [])), numel_by_unit.get(name, 0), dequant_by_unit.get(name, 0),
             PART_OF_KIND.get(kind) in full, quantized_by_unit.get(name, 0), state_by_unit.get(name, 0))
        for name, kind in specs
    )
    return Layout(units=units, shape=shape_of(config), tied=bool(config.tie_word_embeddings),
                  param_bytes=tuple(param_bytes), config_json=config_json, dtype=dtype,
                  visual=family_of(config).visual)


def _owner(name: str, prefixes: set[str]) -> str:
    """The unit a parameter or module name belongs to (longest dotted prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in prefixes:
            return candidate
    return name
