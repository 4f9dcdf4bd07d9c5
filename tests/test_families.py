"""Model families as data: each table checked against transformers' own model of every bundled preset."""

import re

import pytest
import torch

from workbench.models import PRESETS, build_meta_model, family_of, load_model_config
from workbench.models.families import FAMILIES, family_for
from workbench.planner import terms

# One preset per family and size class; the larger ones share their family's module layout.
PRESET_FAMILY = {name: name.split("-vl")[0] + "-vl" for name in PRESETS}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_its_family_by_model_type(name):
    config = load_model_config(name)
    family = family_of(config)
    assert family.model_type == config.model_type
    assert family.name.lower() == PRESET_FAMILY[name]
    assert type(build_meta_model(config)).__name__ == family.model_class


@pytest.mark.parametrize("name", ["qwen2-vl-2b-instruct", "qwen2.5-vl-3b-instruct", "qwen3-vl-2b-instruct"])
def test_the_table_matches_the_model(name):
    config = load_model_config(name)
    family = family_of(config)
    model = build_meta_model(config)
    vision = config.vision_config
    # image-to-token rule: one token per (patch x merge)^2 pixels: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL
    assert family.pixels_per_token == vision.patch_size * vision.spatial_merge_size
    # the no-split units are transformers' own (what device_map and FSDP keep whole)
    assert set(family.no_split_modules) == set(model._no_split_modules)
    classes = {type(m).__name__ for m in model.modules()}
    assert {family.decoder_layer, family.vision_block} <= classes
    tower = model.get_submodule(family.visual)
    assert family.vision_width(vision) == tower.blocks[0].attn.qkv.in_features
    assert model.get_submodule(family.language).layers[0].__class__.__name__ == family.decoder_layer
    for unit in family.vision_units_in:
        assert hasattr(tower, unit)


def linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_lora_presets_match_the_family_modules(model_type):
    family = FAMILIES[model_type]
    name = {"qwen2_vl": "qwen2-vl-2b-instruct", "qwen2_5_vl": "qwen2.5-vl-3b-instruct",
            "qwen3_vl": "qwen3-vl-2b-instruct"}[model_type]
    names = linear_names(build_meta_model(load_model_config(name)))
    presets = family.target_presets()

    def matched(preset):
        return {n for n in names if re.fullmatch(presets[preset], n)}

    language = {n for n in names if n.startswith(family.language + ".")}
    tower = {n for n in names if n.startswith(family.visual + ".")}
    assert matched("language-all-linear") == language
    assert matched("language-attention") == {n for n in language if n.rsplit(".", 1)[1] in ("q_proj", "k_proj",
                                                                                              "v_proj", "o_proj")}
    mergers = matched("language-and-merger") - language
    assert mergers and all(".blocks." not in n for n in mergers)
    if model_type == "qwen3_vl":  # the deepstack mergers are mergers too
        assert any("deepstack_merger_list" in n for n in mergers)
    # language-and-vision: every linear of the tower and the language model; lm_head never
    assert matched("language-and-vision") == language | tower


def test_moe_and_other_model_types_are_refused_with_the_reason():
    from workbench.errors import UserError

    with pytest.raises(UserError, match="not supported yet"):
        family_for("qwen3_vl_moe")
    with pytest.raises(UserError, match="handles Qwen2-VL"):
        family_for("llava")


@pytest.mark.parametrize("name,units", [("qwen2-vl-2b-instruct", 32 + 1), ("qwen2.5-vl-3b-instruct", 32 + 1),
                                        ("qwen3-vl-2b-instruct", 24 + 1 + 3)])
def test_planner_units_follow_the_family(name, units):
    from workbench.planner.layout import build_layout

    layout = build_layout(load_model_config(name), "bf16", "language-all-linear", 8)
    vision = [u for u in layout.units if u.kind in ("vision_block", "merger")]
    assert len(vision) == units
    # every parameter belongs to a unit: the units' bytes add up to the model's
    assert sum(u.weight_bytes for u in layout.units) == layout.weight_bytes


def test_vision_terms_by_hand():
    from workbench.planner.layout import build_layout

    qwen25 = build_layout(load_model_config("qwen2.5-vl-7b-instruct"), "bf16", "language-all-linear", 8).shape
    assert (qwen25.vision_embed, qwen25.vision_mlp, qwen25.window_patches, qwen25.full_attention_blocks) == \
        (1280, 3420, 64, 4)
    # SwiGLU tower: gate, up and product alive at once (3 MLP-wide tensors, not 2)
    patches = 4096
    assert terms.vision_forward_bytes(patches, 1280, 3420, 1176, 2, 3) - \
        terms.vision_forward_bytes(patches, 1280, 3420, 1176, 2, 2) == patches * 2 * 3420
    # windowed attention: 28 blocks over 64-patch windows, 4 over the whole 4096-patch image
    assert terms.vision_attention_flops(patches, patches, 1280, 32, 4, 64) == 4.0 * patches * 1280 * (4 * 4096 + 28 * 64)
    assert terms.vision_attention_flops(patches, patches, 1280, 32, 32, 0) == 4.0 * patches * 1280 * 32 * 4096
    qwen3 = build_layout(load_model_config("qwen3-vl-8b-instruct"), "bf16", "language-all-linear", 8).shape
    assert (qwen3.deepstack_levels, qwen3.qk_norm, qwen3.pixels_per_token, qwen3.head_dim) == (3, True, 32, 128)
    assert terms.deepstack_bytes(1000, 4096, 3) == 3 * 1000 * 4096 * 2
    plain = terms.decoder_layer_saved_bytes(10, 64, 128, 64, 32, 4, [], 8, False)
    normed = terms.decoder_layer_saved_bytes(10, 64, 128, 64, 32, 4, [], 8, False, qk_norm=True, kv_heads=2)
    assert normed - plain == 10 * (4 * (64 + 32) + 4 * (4 + 2))


@pytest.mark.parametrize("name", ["qwen2.5-vl-72b-instruct", "qwen3-vl-32b-instruct", "qwen3-vl-2b-instruct"])
def test_plans_answer_for_every_family(name):
    from workbench.hardware import parse_gpu_spec as parse_gpus
    from workbench.planner import PlanRequest, plan_memory

    plan = plan_memory(PlanRequest(model=name, gpus=parse_gpus("4x40GiB")))
    assert plan.devices and plan.strategies and plan.max_length_that_fits
    assert {e["name"] for e in plan.strategies} == {"device_map", "ddp", "fsdp"}
    if plan.device_map:
        assert all(k.startswith(("model.", "lm_head")) for k in plan.device_map)


def test_qwen3_images_cost_fewer_tokens_per_pixel():
    from workbench.hardware import parse_gpu_spec as parse_gpus
    from workbench.planner import PlanRequest
    from workbench.planner.request import layout_for, step_for

    for name, per_image in (("qwen2.5-vl-7b-instruct", 1003520 // 784), ("qwen3-vl-8b-instruct", 1003520 // 1024)):
        request = PlanRequest(model=name, gpus=parse_gpus("1x80GiB"))
        layout = layout_for(request)
        assert step_for(request, layout).visual_tokens_per_image == per_image == request.visual_tokens(layout)


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b-instruct", "qwen3-vl-2b-instruct"])
def test_planner_resolves_presets_with_the_family_names(name):
    """'language-and-vision' on a Qwen2.5-VL or Qwen3-VL plan trains the family's own tower linears."""
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest
    from workbench.planner.request import layout_for

    layout = layout_for(PlanRequest(model=name, gpus=parse_gpu_spec("1x80GiB"), lora_targets="language-and-vision"))
    blocks = [u for u in layout.units if u.kind == "vision_block"]
    assert layout.vision_trained and all(u.lora_params > 0 for u in blocks)
    # Qwen2.5-VL: qkv, proj and the three SwiGLU linears; Qwen3-VL: qkv, proj, linear_fc1, linear_fc2
    assert len(blocks[0].lora_inputs) == (5 if name.startswith("qwen2.5") else 4)


# The hub's checkpoints of these families name the text weights model.* and the tower visual.* (their
# model.safetensors.index.json); Qwen3-VL's already use the module names.
HUB_NAMING = {"qwen2_vl": True, "qwen2_5_vl": True, "qwen3_vl": False}


@pytest.mark.parametrize("name", ["qwen2-vl-2b-instruct", "qwen2.5-vl-3b-instruct", "qwen3-vl-2b-instruct"])
def test_checkpoint_renames_are_the_ones_transformers_loads_with(name):
    """export reads a base's tensors and peft's pieces through the family's renames: they must give
    what transformers' own conversion mapping gives for the same names, for both namings."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    config = load_model_config(name)
    family = family_of(config)
    model = build_meta_model(config)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]

    def theirs(key):
        return rename_source_key(key, renamings, converters)[0]

    modules = list(model.state_dict())
    assert any(k.startswith("model.visual.") for k in modules) and any(k.startswith("model.language_model.") for k in modules)
    for key in modules:
        assert family.module_name(key) == theirs(key) == key
    if HUB_NAMING[family.model_type]:
        for key in modules:
            hub = key.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
            assert family.module_name(hub) == theirs(hub) == key, hub
        # peft adapters of older transformers: module names without the parameter
        assert family.module_name("model.layers.3.self_attn.q_proj") == theirs("model.layers.3.self_attn.q_proj") \
            == "model.language_model.layers.3.self_attn.q_proj"
    assert family.input_embedding in modules and family.output_embedding in modules
