"""device_map, DDP and FSDP2 side by side: each new term by hand on a tiny shape, the rows, the
speed model, the choice on the hardware table of issue 12, and the CLI/JSON contract."""

import json
import re

import pytest

from workbench.hardware import GIB, parse_gpu_spec
from workbench.planner import PlanRequest, format_plan, plan_memory, terms
from workbench.planner.compare import choose
from workbench.planner.device_map import Step
from workbench.planner.speed import Links, comm_bytes, step_flops, timing
from workbench.planner.strategies import ddp_row, fsdp_row, gathered_parts, whole_model


@pytest.fixture(scope="module")
def tiny():
    """Hidden 64, MLP 176, 2 layers, 4 heads (2 KV) of 16, vocab 1000, untied; vision depth 2, embed 32.

    Per decoder layer: q 64x64+64, k and v 64x32+32, o 64x64, gate/up/down 3 x 64x176, two norms
    2 x 64 = 46336 parameters (92672 bytes in bf16); LoRA r2 on the seven linears:
    2(64+64) x 2 + 2(64+32) x 2 + 2(64+176) x 3 = 2336 parameters.
    """
    from transformers import Qwen2VLConfig

    from workbench.planner.layout import build_layout
    from workbench.settings import TARGET_PRESETS

    text = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096, tie_word_embeddings=False,
                bos_token_id=0, eos_token_id=1)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    layout = build_layout(config, "bf16", TARGET_PRESETS["language-all-linear"], 2)
    layers = [u for u in layout.units if u.kind == "layer"]
    assert [(u.numel, u.weight_bytes, u.lora_params) for u in layers] == [(46336, 92672, 2336)] * 2
    assert layout.weight_bytes == 600576 and layout.lora_params == 4672
    return layout


def step(tokens=64, images=0, checkpointing=True) -> Step:
    return Step(batch_size=1, max_length=tokens, images_per_sample=images, visual_tokens_per_image=16,
                gradient_checkpointing=checkpointing, lora_rank=2)


# ---- the terms, by hand -----------------------------------------------------------------------
def test_nccl_and_ddp_bucket_terms():
    assert terms.nccl_bytes(1) == 0
    assert terms.nccl_bytes(2) == 544_000_000 and terms.nccl_bytes(3) == terms.nccl_bytes(64) == 688_000_000
    assert terms.ddp_bucket_bytes(4672, 1) == 0  # one process is not wrapped in DDP
    assert terms.ddp_bucket_bytes(4672, 2) == 18688


def test_fsdp_shard_and_gathered_terms():
    assert terms.fsdp_shard_bytes(600576, 4) == 150144
    assert terms.fsdp_shard_bytes(10, 4) == 3  # the last shard is padded: ceil
    # root 10, one layer 50 + 8 x 2 LoRA = 66, tail 120 beats a second layer and embed 100
    assert terms.fsdp_gathered_bytes(root=10, embed=100, tail=120, layer=50, layer_lora_params=2) == 10 + 66 + 120
    # with a small tail the second (prefetched) layer is the larger
    assert terms.fsdp_gathered_bytes(root=0, embed=30, tail=40, layer=50, layer_lora_params=0) == 100


def test_gathered_parts_follow_accelerates_wrapping(tiny):
    # root: patch_embed 75264 + merger 49664 (rotary has no weights); tail: norm 128 + lm_head 128000
    assert gathered_parts(tiny) == {"root": 124928, "embed": 128000, "tail": 128128, "layer": 92672,
                                    "layer_lora_params": 2336}


def test_ddp_row_is_the_whole_model_plus_buckets_and_nccl(tiny):
    one = whole_model(tiny, step())
    row = ddp_row(tiny, step(), 2)
    assert row["weights_bytes"] == 600576 and row["lora_bytes"] == 16 * 4672
    assert (row["activation_bytes"], row["logits_bytes"]) == (one["activation_bytes"], one["logits_bytes"])
    assert row["logits_bytes"] == 64 * 1000 * 12  # every GPU computes its own batch's loss
    assert row["comm_bytes"] == 18688
    dynamic = row["activation_bytes"] + row["logits_bytes"] + 18688
    assert row["overhead_bytes"] == terms.overhead_bytes(dynamic) + 544_000_000
    assert row["total_bytes"] == sum(row[k] for k in ("weights_bytes", "lora_bytes", "activation_bytes",
                                                      "logits_bytes", "comm_bytes", "overhead_bytes"))


def test_fsdp_row_shards_weights_and_lora_but_not_activations(tiny):
    one = whole_model(tiny, step())
    row = fsdp_row(tiny, step(), 4)
    assert row["weights_bytes"] == 150144 and row["lora_bytes"] == 16 * 4672 // 4
    assert row["activation_bytes"] == one["activation_bytes"] and row["logits_bytes"] == one["logits_bytes"]
    # 124928 root + (92672 + 8 x 2336) + max(that layer, tail 128128, embed 128000)
    assert row["comm_bytes"] == 124928 + 111360 + 128128
    assert row["overhead_bytes"] == terms.overhead_bytes(row["activation_bytes"] + row["logits_bytes"]
                                                         + row["comm_bytes"]) + 688_000_000
    alone = fsdp_row(tiny, step(), 1)  # nothing to shard with: the single-GPU row
    assert alone["total_bytes"] == one["total_bytes"] and alone["comm_bytes"] == 0


# ---- the speed model ---------------------------------------------------------------------------
def test_step_flops_by_hand(tiny):
    # (2 layers x 46336 + lm_head 1000 x 64) x 64 tokens x 2 FLOPs x 3 passes with checkpointing
    assert step_flops(tiny, step()) == 2 * 156672 * 64 * 3
    assert step_flops(tiny, step(checkpointing=False)) == 2 * 156672 * 64 * 2
    # one image of 16 tokens = 64 patches through the frozen tower (forward only): 2 x 79552 x 64 more,
    # plus its attention: 4 x 64 patches x width 32 x (2 blocks x 64 patches of context)
    assert step_flops(tiny, step(images=1)) == (2 * 156672 * 64 * 3 + 2 * (37632 + 2 * 8544 + 24832) * 64
                                                + 4 * 64 * 32 * (2 * 64))


def test_a_trained_merger_alone_adds_only_its_own_backward_passes():
    """Before: a trained merger ran the whole tower three times (7B, one 1003520-pixel image: 120.5
    TFLOP a step, now 99.0)."""
    from workbench.planner.request import layout_for, step_for

    def flops(**parts):
        request = PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"), **parts)
        layout = layout_for(request)
        return step_flops(layout, step_for(request, layout))

    patches = 1003520 // 784 * 4
    # the merger (ln_q 2 x 1280, mlp 5120 -> 5120 -> 3584 with biases), 2 more passes with checkpointing
    merger = 2 * 1280 + 5120 * 5120 + 5120 + 5120 * 3584 + 3584
    trained = flops(vision="frozen", merger="full", language="lora")
    assert trained - flops(vision="frozen", merger="frozen", language="lora") == 2 * merger * patches * 2


def test_comm_bytes_by_hand(tiny):
    assert comm_bytes("device_map", tiny, 4) == 0 and comm_bytes("ddp", tiny, 1) == 0
    assert comm_bytes("ddp", tiny, 4) == 2 * 0.75 * 4 * 4672
    # all weights once, the layers and embeddings again in backward, LoRA gradients reduce-scattered
    assert comm_bytes("fsdp", tiny, 4) == 0.75 * (600576 + 2 * 92672 + 128000 + 4 * 4672)


def test_relative_speed_is_n_minus_communication(tiny):
    fast = Links(intra_node_gbps=1e6, inter_node_gbps=1e6, tflops=1.0, known_cards=True)
    slow = Links(intra_node_gbps=1e-6, inter_node_gbps=1e-6, tflops=1.0, known_cards=True)
    assert timing("device_map", tiny, step(), 4, 1, slow)["relative_speed"] == 1.0
    assert timing("ddp", tiny, step(), 4, 1, fast)["relative_speed"] == pytest.approx(4, rel=1e-3)
    assert timing("fsdp", tiny, step(), 4, 1, slow)["relative_speed"] < 0.01
    # across nodes the slower link paces the ring
    assert Links(300, 25, 312, True).bandwidth(2) == 25e9 and Links(300, 25, 312, True).bandwidth(1) == 300e9


# ---- the choice --------------------------------------------------------------------------------
def test_choose_fastest_that_fits_ties_by_headroom():
    def e(name, fits, speed, free):
        return {"name": name, "fits": fits, "relative_speed": speed, "min_free_bytes": free}

    assert choose([e("device_map", True, 1.0, 5), e("ddp", False, 4.0, -9), e("fsdp", True, 2.5, 3)]) == "fsdp"
    assert choose([e("device_map", True, 1.0, 5), e("ddp", True, 1.001, 4), e("fsdp", True, 1.0, 1)]) == "device_map"
    assert choose([e("device_map", False, 1.0, -1), e("ddp", False, 2.0, -9), e("fsdp", False, 1.5, -3)]) == "device_map"


# (model, GPUs of one node, nodes) -> the strategy auto picks, and why (docs/planner-strategies.md):
HARDWARE = [
    ("qwen2-vl-7b-instruct", "1x24GiB", 1, "device_map"),   # one GPU: all alike, device_map keeps most free
    ("qwen2-vl-7b-instruct", "2x24GiB", 1, "ddp"),          # 7B fits on one 24 GiB GPU: two replicas
    ("qwen2-vl-7b-instruct", "4x24GiB", 1, "ddp"),
    ("qwen2-vl-7b-instruct", "1x80GiB", 1, "device_map"),
    ("qwen2-vl-7b-instruct", "2x80GiB", 1, "ddp"),
    ("qwen2-vl-7b-instruct", "4x80GiB", 1, "ddp"),
    ("qwen2-vl-72b-instruct", "4x40GiB", 1, "device_map"),  # 146 GiB replicas and 46 GiB shards do not fit
    ("qwen2-vl-72b-instruct", "4x40GiB", 2, "fsdp"),        # 8 shards of 17 GiB fit
    ("qwen2-vl-72b-instruct", "2x80GiB", 1, "device_map"),  # 2 shards: 81 GiB on 80
    ("qwen2-vl-72b-instruct", "8x80GiB", 1, "fsdp"),
]


@pytest.mark.parametrize("model,gpus,nodes,chosen", HARDWARE)
def test_strategy_choice_on_the_hardware_table(model, gpus, nodes, chosen):
    plan = plan_memory(PlanRequest(model, parse_gpu_spec(gpus), nodes=nodes))
    assert plan.strategy == chosen and plan.fits
    assert [e["name"] for e in plan.strategies] == ["device_map", "ddp", "fsdp"]
    picked = plan.entry(chosen)
    assert plan.devices == picked["devices"] and len(plan.devices) == len(parse_gpu_spec(gpus))
    assert all(e["relative_speed"] <= picked["relative_speed"] + 0.005 for e in plan.strategies if e["fits"])
    assert plan.choice.startswith(chosen)
    assert (plan.device_map is not None) == (chosen == "device_map")


def test_72b_ddp_never_fits_and_fsdp_needs_eight_shards():
    one_node = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB")))
    two = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), nodes=2))
    assert one_node.entry("ddp")["devices"][0]["weights_bytes"] == 2 * 73_405_560_320
    assert two.entry("fsdp")["devices"][0]["weights_bytes"] == -(-2 * 73_405_560_320 // 8)
    assert not one_node.entry("fsdp")["fits"] and two.entry("fsdp")["fits"]
    # device_map runs in one process on one node whatever the node count: the same rows
    assert one_node.entry("device_map")["devices"] == two.entry("device_map")["devices"]
    assert "on one node; the other node idles" in two.entry("device_map")["why"]


def test_fsdp_on_a_4bit_base_is_recommended_for_72b_on_one_node():
    """The seed question on a 4-bit base: FSDP2 shards the packed weights, not bitsandbytes'
    quantisation constants (whole on every GPU), and is the fastest that fits."""
    request = PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), quantization="nf4")
    plan = plan_memory(request)
    fsdp = plan.entry("fsdp")
    assert fsdp["fits"] and fsdp["trains"] and plan.strategy == "fsdp" and plan.choice.startswith("fsdp over 4 GPUs")
    # 80 layers of q, o (8192 x 8192), k, v (1024 x 8192), gate, up, down (29568 x 8192)
    shapes = [(8192, 8192)] * 2 + [(1024, 8192)] * 2 + [(29568, 8192)] * 3
    numel = [rows * cols for rows, cols in shapes] * 80
    # per weight: one 8-bit absmax per 64, one fp32 per 256 absmax, 16 + 256 fp32 code values
    state = sum(-(-n // 64) + 4 * -(-(-(-n // 64)) // 256) + 4 * (16 + 256) for n in numel)
    layout = request_layout(request)
    assert layout.quantized_numel == sum(numel) == 70_212_648_960
    assert layout.quant_state_bytes == state
    assert fsdp["devices"][0]["weights_bytes"] == -(-(layout.weight_bytes - state) // 4) + state
    # each 4-bit weight read packed and written in bf16, three passes (checkpointing), at the A800's 1555 GB/s
    assert fsdp["dequant_seconds"] == pytest.approx(3 * sum(numel) * 2.5 / 1555e9, abs=1e-4)
    c, d, m = fsdp["compute_seconds"], fsdp["dequant_seconds"], fsdp["comm_seconds"]
    assert fsdp["relative_speed"] == pytest.approx(4 * (c + d) / (c + d + m), abs=2e-3)
    assert plan.entry("device_map")["dequant_seconds"] == fsdp["dequant_seconds"]  # the same work on any strategy
    unquantised = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), nodes=2))
    assert unquantised.entry("fsdp")["dequant_seconds"] == 0 and "host_bytes_per_rank" not in unquantised.entry("fsdp")
    # every rank quantises the whole base, reading the largest tensor (embeddings, 152064 x 8192) in bf16
    assert fsdp["host_bytes_per_rank"] == layout.weight_bytes + 152064 * 8192 * 2
    assert "42.00 GiB of host memory per GPU" in fsdp["why"]


def test_fsdp_on_an_int8_base_is_planned_but_never_recommended():
    """bitsandbytes' 8-bit weights are integer tensors FSDP2 cannot shard; the trainer refuses them."""
    plan = plan_memory(PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("4x24GiB"), quantization="int8"))
    fsdp = plan.entry("fsdp")
    assert not fsdp["trains"] and "does not train fsdp on an int8 base" in fsdp["why"]
    assert plan.strategy != "fsdp"


def request_layout(request):
    from workbench.planner.request import layout_for

    return layout_for(request)


def test_asked_strategy_that_does_not_fit_suggests_the_one_that_does():
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4x40GiB"), strategy="ddp"))
    assert plan.strategy == "ddp" and not plan.fits and plan.device_map is None
    assert plan.suggestions[0]["settings"] == {"training.strategy": "device_map"}
    assert plan.choice.startswith("ddp as asked does not fit")
    fsdp = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4x40GiB"), strategy="fsdp"))
    assert any(s["settings"] == {"training.nodes": 2} and s["fits"] for s in fsdp.suggestions)
    # fsdp trains on a 4-bit base: the one node's 4 shards fit in nf4
    assert any(s["settings"] == {"model.quantization": "nf4"} and s["fits"] for s in fsdp.suggestions)


def test_fsdp_searches_use_the_fsdp_model():
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("8x80GiB"), strategy="fsdp"))
    from dataclasses import replace

    from workbench.planner.request import layout_for, step_for
    from workbench.planner.strategies import strategy

    layout = layout_for(plan.request)
    st = step_for(plan.request, layout)
    caps = [g.total_bytes for g in plan.request.gpus]
    best = plan.max_length_that_fits
    assert strategy("fsdp").fits(layout, replace(st, max_length=best), caps)
    assert best == layout.shape.max_positions or not strategy("fsdp").fits(layout, replace(st, max_length=best + 1), caps)


@pytest.mark.parametrize("change", [dict(strategy="zero3"), dict(nodes=0), dict(nodes=True),
                                    dict(intra_node_gbps=0), dict(inter_node_gbps=-1)])
def test_bad_strategy_inputs_are_user_errors(change):
    from workbench.errors import UserError

    with pytest.raises(UserError):
        plan_memory(PlanRequest("qwen2-vl-2b-instruct", parse_gpu_spec("1x24GiB"), **change))


def test_cli_strategy_nodes_and_links(capsys):
    from workbench.cli.main import main

    rc = main(["plan", "--model", "qwen2-vl-72b-instruct", "--gpus", "4xA800-40GB", "--nodes", "2",
               "--intra-node-gbps", "155", "--inter-node-gbps", "50", "--json"])
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and data["strategy"] == "fsdp" and data["nodes"] == 2 and data["device_map"] is None
    assert data["speed_inputs"]["intra_node_gbps"] == 155 and data["speed_inputs"]["inter_node_gbps"] == 50
    assert data["devices"][0]["capacity_bytes"] == int(39.59 * GIB)
    by_name = {e["name"]: e for e in data["strategies"]}
    assert by_name["device_map"]["device_map"]["lm_head"] == 3  # kept for switching to device_map
    assert set(by_name["fsdp"]) >= {"name", "fits", "devices", "peak_bytes", "relative_speed", "why"}
    rc = main(["plan", "--model", "qwen2-vl-72b-instruct", "--gpus", "4xA800-40GB", "--strategy", "ddp"])
    out = capsys.readouterr().out
    assert rc == 1 and "*ddp" in out and "train with device_map instead of ddp" in out


def test_plan_with_strategies_reports_its_time():
    # the time itself is a benchmark figure (docs/planner-accuracy.md), never a timed assertion here
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), nodes=2))
    assert 0 < plan.plan_seconds and plan.to_json()["plan_seconds"] == round(plan.plan_seconds, 4)


def test_seed_question_figures_in_readme_and_docs_are_the_planners():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = (root / "README.md").read_text() + (root / "docs" / "seed-question.md").read_text()
    for nodes in (1, 2):
        plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), nodes=nodes))
        for e in plan.strategies:
            assert f"{e['peak_bytes'] / GIB:.2f} GiB" in docs, (nodes, e["name"])
        chosen = plan.entry(plan.strategy)
        assert f"{chosen['min_free_bytes'] / GIB:.2f} GiB free" in docs
        assert f"Largest max_length that fits: {plan.max_length_that_fits}." in docs
        # one figure everywhere: the table's, the headline's and the prose's speed of the chosen strategy
        assert f"{chosen['relative_speed']:.2f}x" in docs and format_plan(plan).splitlines()[0] in docs
    assert not re.search(r"\b2\.9x|2\.87x", docs)
    quantised = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), quantization="nf4"))
    row = next(line for line in docs.splitlines() if line.startswith("| one node, 4-bit base"))
    assert f"**{quantised.strategy}**" in row and f"{quantised.entry('fsdp')['relative_speed']:.2f}x" in row
    for e in quantised.strategies:
        assert f"{e['peak_bytes'] / GIB:.2f} GiB" in row, e["name"]
