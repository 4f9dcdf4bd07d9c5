"""Model families as data: one table per Qwen vision-language generation.

A family is chosen by the ``model_type`` in a model's config.json, never by its name. The
planner, the data layer, training and inference read everything family-specific from
here: the transformers classes, the no-split units (what device_map and FSDP place or wrap
whole), the module names LoRA presets match, the pixels per visual token, the chat
template, and the vision tower's terms for the memory model. Adding the next generation
means adding a table to ``FAMILIES`` (docs/families.md says how): export reads checkpoints through its
renames too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files

from workbench.errors import UserError

# Package data (workbench/assets), read through importlib.resources so an installed wheel finds it too.
TEMPLATES = files("workbench") / "assets" / "templates"
# The language model's linears, named alike in every family; a regex so the vision tower's own
# projections (which may also be called gate_proj/up_proj/down_proj) are never matched.
LANGUAGE_LINEARS = r"language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LANGUAGE_ATTENTION = r"language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@dataclass(frozen=True)
class VisionTerms:
    """What the planner's vision-tower terms need beyond the config's sizes.

    mlp_activations: MLP-wide tensors alive at once in a frozen block's forward (a GELU MLP:
        fc1's output and its activation, 2; SwiGLU: gate, up and their product, 3).
    mlp_saved: MLP-wide tensors autograd keeps per block when LoRA trains the tower (GELU: 3;
        SwiGLU: gate, up, silu(gate) and the product, 4).
    window_patches: patches one windowed-attention block attends over (Qwen2.5-VL: a 112 x 112
        pixel window = 8 x 8 patches); 0 when every block attends over the whole image.
    full_attention_key / deepstack_key: the vision config's list of full-attention blocks
        (windowed towers) and of blocks whose features a deepstack merger feeds into the first
        decoder layers (Qwen3-VL), or None.
    """

    mlp_activations: int = 2
    mlp_saved: int = 3
    window_patches: int = 0
    full_attention_key: str | None = None
    deepstack_key: str | None = None


@dataclass(frozen=True)
class Family:
    name: str                   # for people: "Qwen2.5-VL"
    model_type: str             # config.json's model_type
    config_class: str           # transformers class names
    model_class: str
    processor_class: str
    image_processor_class: str
    video_processor_class: str
    decoder_layer: str          # no-split / FSDP wrap units
    vision_block: str
    pixels_per_token: int       # side of the pixel square one visual token covers (patch x merge)
    vision_width_key: str       # the vision config's block width
    vision_units_in: tuple[str, ...]    # modules under the tower that run before the blocks
    vision_units_out: tuple[str, ...]   # modules after the blocks ("{i}" = one per deepstack level)
    vision_linears: str         # regex (below the tower) of the blocks' LoRA-able linears
    merger_linears: str         # regex (below the tower) of the mergers' linears
    chat_template: str          # file under workbench/assets/templates: the published checkpoints' template
    vision: VisionTerms = VisionTerms()
    qk_norm: bool = False       # RMSNorm on each head's q and k (Qwen3): two more saved tensors
    visual: str = "model.visual"
    language: str = "model.language_model"
    # Checkpoint name -> module name, in order (pattern, replacement), as transformers renames this
    # family's checkpoints when it loads them: export reads a base's tensors and peft's adapter pieces
    # (older releases named them after older module names) through these (tests/test_families_keys.py
    # pins them to transformers' own conversion mapping).
    checkpoint_renames: tuple[tuple[str, str], ...] = ()
    demo: str = "demo"          # the tiny local model of this family
    # Its toy sizes: the vision config, and text-config keys beyond the demo's common ones.
    demo_vision: dict = field(default_factory=dict)
    demo_text: dict = field(default_factory=dict)

    # ---- derived -------------------------------------------------------------------------
    def transformers_class(self, attr: str):
        import transformers

        return getattr(transformers, getattr(self, attr))

    def vision_width(self, vision_config) -> int:
        return int(getattr(vision_config, self.vision_width_key))

    def vision_mlp_width(self, vision_config) -> int:
        ratio = getattr(vision_config, "mlp_ratio", None)
        if ratio is not None and self.vision_width_key == "embed_dim":
            return int(vision_config.embed_dim * ratio)
        return int(vision_config.intermediate_size)

    def deepstack_levels(self, vision_config) -> int:
        key = self.vision.deepstack_key
        return len(getattr(vision_config, key, None) or ()) if key else 0

    def full_attention_blocks(self, vision_config) -> int:
        """Blocks attending over the whole image (all of them unless the tower uses windows)."""
        key = self.vision.full_attention_key
        if not self.vision.window_patches or not key:
            return int(vision_config.depth)
        return len(getattr(vision_config, key, None) or ())

    @property
    def template_text(self) -> str:
        return (TEMPLATES / self.chat_template).read_text(encoding="utf-8")

    def module_name(self, name: str) -> str:
        """A checkpoint's or an adapter's tensor name in the current module naming."""
        for pattern, replacement in self.checkpoint_renames:
            name = re.sub(pattern, replacement, name, count=1)
        return name

    @property
    def input_embedding(self) -> str:
        """The input embedding's weight: what tie_word_embeddings shares with the output embedding."""
        return f"{self.language}.embed_tokens.weight"

    output_embedding = "lm_head.weight"

    @property
    def no_split_modules(self) -> tuple[str, str]:
        return (self.decoder_layer, self.vision_block)

    def target_presets(self) -> dict[str, str]:
        """The LoRA target presets (same names in every family) as regexes over this family's modules."""
        tower = r"visual\."
        merger = f"{tower}({self.merger_linears})"
        blocks = rf"{tower}blocks\.\d+\.({self.vision_linears})"
        return {
            "language-all-linear": rf".*{LANGUAGE_LINEARS}",
            "language-attention": rf".*{LANGUAGE_ATTENTION}",
            "language-and-merger": rf".*({LANGUAGE_LINEARS}|{merger})",
            "language-and-vision": rf".*({LANGUAGE_LINEARS}|{blocks}|{merger})",
        }


# The hub's Qwen2-VL and Qwen2.5-VL checkpoints (and what transformers 5 writes back on save) name the
# text weights model.layers.* and the tower visual.*; the modules are model.language_model.* and
# model.visual.*. Qwen3-VL checkpoints already use the module names (transformers renames nothing).
QWEN2_VL_CHECKPOINT = ((r"^visual\.", "model.visual."),
                       (r"^model\.(?!language_model\.|visual\.)", "model.language_model."))

QWEN2_VL = Family(
    name="Qwen2-VL", model_type="qwen2_vl", config_class="Qwen2VLConfig",
    model_class="Qwen2VLForConditionalGeneration", processor_class="Qwen2VLProcessor",
    image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen2VLVideoProcessor",
    decoder_layer="Qwen2VLDecoderLayer", vision_block="Qwen2VLVisionBlock", pixels_per_token=28,
    vision_width_key="embed_dim", vision_units_in=("patch_embed", "rotary_pos_emb"), vision_units_out=("merger",),
    vision_linears=r"attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2", merger_linears=r"merger\.mlp\.(0|2)",
    chat_template="qwen2_vl.jinja", vision=VisionTerms(mlp_activations=2, mlp_saved=3),
    checkpoint_renames=QWEN2_VL_CHECKPOINT, demo="demo",
    demo_vision={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14},
)

QWEN2_5_VL = Family(
    name="Qwen2.5-VL", model_type="qwen2_5_vl", config_class="Qwen2_5_VLConfig",
    model_class="Qwen2_5_VLForConditionalGeneration", processor_class="Qwen2_5_VLProcessor",
    image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen2VLVideoProcessor",
    decoder_layer="Qwen2_5_VLDecoderLayer", vision_block="Qwen2_5_VLVisionBlock", pixels_per_token=28,
    vision_width_key="hidden_size", vision_units_in=("patch_embed", "rotary_pos_emb"), vision_units_out=("merger",),
    vision_linears=r"attn\.qkv|attn\.proj|mlp\.gate_proj|mlp\.up_proj|mlp\.down_proj",
    merger_linears=r"merger\.mlp\.(0|2)",
    # Qwen2.5-VL's checkpoints ship Qwen2-VL's template unchanged.
    chat_template="qwen2_vl.jinja",
    vision=VisionTerms(mlp_activations=3, mlp_saved=4, window_patches=64, full_attention_key="fullatt_block_indexes"),
    checkpoint_renames=QWEN2_VL_CHECKPOINT, demo="demo-qwen2.5-vl",
    # 112-pixel windows (8 x 8 patches) as in the real tower; block 1 attends over the whole image.
    demo_vision={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                 "patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1]},
)

QWEN3_VL = Family(
    name="Qwen3-VL", model_type="qwen3_vl", config_class="Qwen3VLConfig",
    model_class="Qwen3VLForConditionalGeneration", processor_class="Qwen3VLProcessor",
    image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen3VLVideoProcessor",
    decoder_layer="Qwen3VLTextDecoderLayer", vision_block="Qwen3VLVisionBlock", pixels_per_token=32,
    vision_width_key="hidden_size", vision_units_in=("patch_embed", "pos_embed", "rotary_pos_emb"),
    vision_units_out=("merger", "deepstack_merger_list.{i}"),
    vision_linears=r"attn\.qkv|attn\.proj|mlp\.linear_fc1|mlp\.linear_fc2",
    merger_linears=r"(merger|deepstack_merger_list\.\d+)\.linear_fc(1|2)",
    chat_template="qwen3_vl.jinja",
    vision=VisionTerms(mlp_activations=2, mlp_saved=3, deepstack_key="deepstack_visual_indexes"),
    qk_norm=True, demo="demo-qwen3-vl",
    # An 8 x 8 learned position grid; block 0's features go to decoder layer 0 through a deepstack merger.
    demo_vision={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                 "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
    demo_text={"head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [2, 3, 3], "mrope_interleaved": True}},
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)}
DEFAULT_FAMILY = QWEN2_VL

# Known Qwen-VL model types the workbench does not train yet, with the reason people need.
NOT_SUPPORTED = {
    "qwen3_vl_moe": "Qwen3-VL mixture-of-experts models (Qwen3-VL-30B-A3B, Qwen3-VL-235B-A22B) are not supported "
                    "yet: the planner has no terms for experts, routing and their LoRA. Use a dense Qwen3-VL "
                    "(qwen3-vl-2b/4b/8b/32b-instruct) or Qwen2.5-VL.",
}


def family_for(model_type: str | None, where: str = "the config") -> Family:
    """The family of a config's ``model_type``; a UserError for MoE and other architectures."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in NOT_SUPPORTED:
        raise UserError(f"{where} is a '{model_type}' model. {NOT_SUPPORTED[model_type]}")
    names = ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES.values())
    raise UserError(f"{where} describes a '{model_type}' model; the workbench handles {names}: point it at one "
                    "of those.")


def family_of(model_or_config) -> Family:
    """The family of a transformers model or config (through its model_type)."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_for(getattr(config, "model_type", None))


def families_by_demo() -> dict[str, Family]:
    return {f.demo: f for f in FAMILIES.values()}
