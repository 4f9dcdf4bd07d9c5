"""The memory planner: each term against hand-computed values, maps, search, JSON contract."""

import json

import pytest

from workbench.errors import UserError
from workbench.hardware import GIB, parse_gpu_spec
from workbench.planner import PlanRequest, map_ranges, plan_memory, terms
from workbench.planner.device_map import device_of, evaluate, pack
from workbench.planner.plan import layout_for, step_for

DEVICE_KEYS = {"device", "capacity_bytes", "weights_bytes", "lora_bytes", "activation_bytes", "logits_bytes", "dequant_bytes",
               "overhead_bytes", "total_bytes"}


@pytest.fixture(scope="module")
def headline():
    return plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4x40GiB"), max_length=2048,
                                   max_pixels=1003520))


# ---- terms, by hand ------------------------------------------------------------
def test_visual_tokens_and_patches():
    assert terms.visual_tokens_per_image(1003520) == 1280  # 1280 x 28 x 28
    assert terms.visual_tokens_per_image(3136) == 4
    assert terms.vision_patches(1280) == 5120


def test_decoder_layer_saved_bytes_small_config():
    # H 256, I 704, 4 heads x 64, 2 KV heads, r 8, LoRA on all 7 linears, dropout, CPU masks:
    # norms 2(4*256+4)=2056; attention 2(2*256+2*128)+4*4=1552; MLP 3*2*704=4224;
    # LoRA 6*(8*256+32)=12480 + (8*704+32)=5664  -> 25976 bytes per token.
    got = terms.decoder_layer_saved_bytes(100, 256, 704, 256, 128, 4, [256] * 6 + [704], 8, True, "cpu")
    assert got == 100 * 25976
    # Without dropout the mask term vanishes: 25976 - 6*4*256 - 4*704.
    assert terms.decoder_layer_saved_bytes(100, 256, 704, 256, 128, 4, [256] * 6 + [704], 8, False, "cpu") == 100 * 17016
    # On CUDA the mask is a bool per element.
    assert terms.decoder_layer_saved_bytes(1, 256, 704, 256, 128, 4, [256], 8, True, "cuda") == \
        2056 + 1552 + 4224 + 5 * 256 + 32


def test_small_terms():
    assert terms.logits_bytes(2048, 152064) == 2048 * 152064 * 12
    assert terms.checkpoint_boundary_bytes(2048, 8192) == 2048 * 8192 * 2
    assert terms.lora_state_bytes(1000) == 16000
    assert terms.lora_parameters(8192, 1024, 8) == 8 * 9216
    assert terms.overhead_bytes(0) == 512 * 1024**2
    assert terms.overhead_bytes(10 * GIB) == 512 * 1024**2 + GIB // 2
    assert terms.final_norm_bytes(10, 8) == 10 * 36
    assert terms.rotary_bytes(10, 128) == 2 * 10 * 128 * 2


@pytest.mark.parametrize("name,lora", [("qwen2-vl-2b-instruct", 9_232_384), ("qwen2-vl-7b-instruct", 20_185_088),
                                       ("qwen2-vl-72b-instruct", 105_267_200)])
def test_lora_parameters_all_language_linears_r8(name, lora):
    layout = layout_for(PlanRequest(name, parse_gpu_spec("1x80GiB")))
    assert layout.lora_params == lora
    assert not layout.vision_trained


def test_targets_presets_and_lists():
    attn = layout_for(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x80GiB"), lora_targets="language-attention"))
    assert attn.lora_params == 8 * 28 * (3072 + 1792 + 1792 + 3072)
    listed = layout_for(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x80GiB"), lora_targets=["q_proj", "v_proj"]))
    assert listed.lora_params == 8 * 28 * (3072 + 1792)
    vision = layout_for(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x80GiB"), lora_targets="language-and-vision"))
    assert vision.vision_trained and vision.lora_params > 9_232_384


def test_weights_split_sums_to_the_model(headline):
    assert sum(d["weights_bytes"] for d in headline.devices) == 2 * 73_405_560_320
    for d in headline.devices:
        assert set(d) == DEVICE_KEYS
        assert d["total_bytes"] == sum(d[k] for k in DEVICE_KEYS if k.endswith("_bytes") and k not in
                                       ("total_bytes", "capacity_bytes"))


# ---- the headline case ------------------------------------------------------------
def test_72b_on_4x40gib_fits_with_logits_on_the_lm_head_gpu(headline):
    # plan time is a benchmark figure (docs/planner-accuracy.md), never a timed assertion here
    assert headline.fits
    again = plan_memory(headline.request)
    assert again.device_map == headline.device_map
    last = device_of(headline.device_map, "lm_head")
    assert last == 3
    # the trained-token loss, answers not measured: every token may be trained, one chunk at a time
    assert headline.devices[3]["logits_bytes"] == terms.trained_logits_bytes(2048, 152064) == 12 * 441 * 152064
    assert all(d["logits_bytes"] == 0 for d in headline.devices[:3])
    assert all(d["total_bytes"] <= d["capacity_bytes"] for d in headline.devices)
    # Balanced: every GPU keeps some free memory (no GPU filled to the brim while another idles).
    free = [d["capacity_bytes"] - d["total_bytes"] for d in headline.devices]
    assert min(free) > GIB and max(free) - min(free) < 2 * GIB
    # No-split units: each decoder layer on exactly one device, in order.
    layers = [device_of(headline.device_map, f"model.language_model.layers.{i}") for i in range(80)]
    assert layers == sorted(layers) and set(layers) == {0, 1, 2, 3}


def test_max_length_that_fits_is_tight(headline):
    best = headline.max_length_that_fits
    assert best and best >= 2048
    layout = layout_for(headline.request)
    step = step_for(headline.request, layout)
    caps = [g.total_bytes for g in headline.request.gpus]
    from dataclasses import replace

    assert pack(layout, replace(step, max_length=best), caps)[1]
    assert not pack(layout, replace(step, max_length=best + 1), caps)[1]
    assert plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4x40GiB"), max_length=best)).fits


def test_device_map_is_usable_by_from_pretrained(headline):
    assert all(isinstance(v, int) for v in headline.device_map.values())
    from transformers.integrations.accelerate import check_and_set_device_map

    assert check_and_set_device_map(headline.device_map) == headline.device_map


def test_json_contract(headline):
    data = json.loads(json.dumps(headline.to_json()))
    # Today's fields for the chosen strategy, plus the strategies side by side (issue 12).
    assert set(data) == {"fits", "devices", "device_map", "max_length_that_fits", "suggestions",
                         "accelerate_auto", "plan_seconds", "strategy", "choice", "strategies", "nodes",
                         "speed_inputs", "max_video_frames_that_fits", "video_row_tokens"}
    assert data["strategy"] == "device_map" and [e["name"] for e in data["strategies"]] == ["device_map", "ddp", "fsdp"]
    for e in data["strategies"]:
        assert {"name", "fits", "devices", "peak_bytes", "relative_speed", "why"} <= set(e)
        assert e["why"].endswith(".") and len(e["devices"]) == 4
    assert isinstance(data["fits"], bool) and isinstance(data["plan_seconds"], float)
    assert all(set(d) == DEVICE_KEYS and all(isinstance(d[k], int) for k in DEVICE_KEYS - {"device"})
               for d in data["devices"])
    assert isinstance(data["max_length_that_fits"], int)
    assert {"fits", "out_of_memory", "devices", "device_map", "summary"} <= set(data["accelerate_auto"])


# ---- maps ----------------------------------------------------------------------------
def test_2b_keeps_tied_lm_head_with_embeddings():
    for full, logits in ((True, terms.logits_bytes(1536, 151936)), (False, terms.trained_logits_bytes(1536, 151936))):
        plan = plan_memory(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("2x4GiB"), max_length=1536,
                                       max_pixels=200704, loss_on_trained_tokens_only=not full))
        embed = device_of(plan.device_map, "model.language_model.embed_tokens")
        assert device_of(plan.device_map, "lm_head") == embed
        assert plan.devices[embed]["logits_bytes"] == logits
        assert len({device_of(plan.device_map, f"model.language_model.layers.{i}") for i in range(28)}) == 2


def test_accelerate_auto_runs_out_where_the_plan_fits():
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("2x80GiB"), max_length=4096,
                                   loss_on_trained_tokens_only=False))
    assert plan.fits
    auto = plan.accelerate_auto
    assert not auto["fits"] and auto["out_of_memory"] == ["cuda:1"]
    assert "cuda:1" in auto["summary"]


def test_map_ranges_fold_layers():
    ranges = map_ranges({"model.visual": 0, "model.language_model.embed_tokens": 0,
                         "model.language_model.layers.0": 0, "model.language_model.layers.1": 0,
                         "model.language_model.layers.2": 1, "model.language_model.norm": 1, "lm_head": 1})
    assert ranges == [("cuda:0", "visual, embed_tokens, layers.0-1"), ("cuda:1", "layers.2, norm, lm_head")]


# ---- when it does not fit --------------------------------------------------------------
def test_suggestions_when_it_does_not_fit():
    plan = plan_memory(PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x24GiB"), max_length=8192,
                                   loss_on_trained_tokens_only=False))
    assert not plan.fits
    assert plan.max_length_that_fits and plan.max_length_that_fits < 8192
    changes = [s["change"] for s in plan.suggestions]
    assert any("max_length" in c for c in changes) and any("4-bit" in c for c in changes)
    settings = {k: v for s in plan.suggestions for k, v in s["settings"].items()}
    # each suggestion is a setting "Use this plan" or the LoRA form can carry out
    assert settings["model.quantization"] == "nf4" and settings["training.loss_on_trained_tokens_only"] is True
    fitting = [s for s in plan.suggestions if s["fits"]]
    assert fitting and [s["saves_bytes"] for s in fitting] == sorted((s["saves_bytes"] for s in fitting), reverse=True)


def test_gradient_checkpointing_off_costs_more():
    on = plan_memory(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x80GiB")))
    off = plan_memory(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x80GiB"), gradient_checkpointing=False))
    assert off.devices[0]["activation_bytes"] > 3 * on.devices[0]["activation_bytes"]


def test_activations_and_logits_scale_linearly_with_length():
    req = PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"), loss_on_trained_tokens_only=False)
    layout = layout_for(req)
    from dataclasses import replace

    step = step_for(req, layout)
    a = evaluate(layout, {"": 0}, replace(step, max_length=2048), 1)[0][0]
    b = evaluate(layout, {"": 0}, replace(step, max_length=4096), 1)[0][0]
    assert b["logits_bytes"] == 2 * a["logits_bytes"]
    assert b["weights_bytes"] == a["weights_bytes"] and b["lora_bytes"] == a["lora_bytes"]


# ---- inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [dict(lora_rank=0), dict(batch_size=-1), dict(max_length=0), dict(max_pixels=0),
                                    dict(gpus=[]), dict(min_pixels=2_000_000), dict(max_length=1000),
                                    dict(model="no-such-model"), dict(dtype="int3"), dict(images_per_sample=-1)])
def test_bad_inputs_are_user_errors(change):
    base = dict(model="qwen2-vl-2b-instruct", gpus=parse_gpu_spec("1x24GiB"))
    with pytest.raises(UserError):
        plan_memory(PlanRequest(**{**base, **change}))


def test_from_run_config():
    from workbench.settings import RunConfig

    cfg = RunConfig.from_dict({"model": {"name_or_path": "qwen2-vl-2b-instruct"}, "data": {"max_length": 3000},
                               "lora": {"rank": 16}, "training": {"gradient_checkpointing": False}})
    req = PlanRequest.from_run_config(cfg, parse_gpu_spec("1x80GiB"))
    assert (req.max_length, req.lora_rank, req.gradient_checkpointing, req.dtype) == (3000, 16, False, "auto")
    assert plan_memory(req).fits
