"""The planner's terms for the trained-token loss and a quantised base, checked against what
bitsandbytes and the loss actually hold (CPU)."""

import sys
from pathlib import Path

import pytest
import torch

from workbench.hardware import parse_gpu_spec
from workbench.planner import PlanRequest, plan_memory, terms
from workbench.planner.request import layout_for, step_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_trained_logits_term_is_one_chunk_at_most():
    vocab = 152064
    chunk = terms.loss_chunk_tokens(vocab)
    assert chunk == 441
    assert terms.trained_logits_bytes(16, vocab) == 12 * 16 * vocab
    assert terms.trained_logits_bytes(2048, vocab) == terms.trained_logits_bytes(chunk, vocab) == 12 * chunk * vocab
    # FSDP2: lm_head inside the forward keeps the bf16 logits of every trained token once they span chunks
    assert terms.trained_logits_bytes(16, vocab, lm_head_in_forward=True) == 12 * 16 * vocab
    assert terms.trained_logits_bytes(2048, vocab, lm_head_in_forward=True) == 12 * chunk * vocab + 4 * 2048 * vocab


def test_the_plan_uses_measured_answer_tokens_else_every_token():
    gpus = parse_gpu_spec("4x40GiB")
    full = plan_memory(PlanRequest("qwen2-vl-72b-instruct", gpus, loss_on_trained_tokens_only=False))
    unknown = plan_memory(PlanRequest("qwen2-vl-72b-instruct", gpus))
    measured = plan_memory(PlanRequest("qwen2-vl-72b-instruct", gpus, trained_tokens=64))
    logits = [max(d["logits_bytes"] for d in p.devices) for p in (full, unknown, measured)]
    assert logits == [terms.logits_bytes(2048, 152064), 12 * 441 * 152064, 12 * 64 * 152064]
    # the seed question: the shorter loss lets longer rows fit
    assert full.max_length_that_fits < unknown.max_length_that_fits <= measured.max_length_that_fits
    fsdp = [p.entry("fsdp")["devices"][0]["logits_bytes"] for p in (unknown, measured)]
    assert fsdp == [12 * 441 * 152064 + 4 * 2048 * 152064, 12 * 64 * 152064]


def test_from_run_config_carries_quantization_and_the_loss():
    from workbench.settings import RunConfig

    config = RunConfig.from_dict({"model": {"name_or_path": "qwen2-vl-7b-instruct", "quantization": "nf4"},
                                  "data": {"trained_tokens": 40}, "training": {"loss_on_trained_tokens_only": False}})
    request = PlanRequest.from_run_config(config, parse_gpu_spec("1x24GiB"))
    assert (request.quantization, request.trained_tokens, request.loss_on_trained_tokens_only) == ("nf4", 40, False)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantised_layout_weights_and_dequantisation_term(kind):
    request = PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"), quantization=kind)
    plain, quantised = layout_for(request, "none"), layout_for(request)
    by_name = dict(quantised.param_bytes)
    down = "model.language_model.layers.0.mlp.down_proj.weight"
    numel = 3584 * 18944
    expected = terms.quantized_4bit_bytes(numel) if kind == "nf4" else numel + 4 * 3584
    assert by_name[down] == expected
    for name, nbytes in plain.param_bytes:  # vision tower, embeddings, lm_head, norms, biases: bf16
        if not (".language_model.layers." in name and name.endswith("proj.weight")):
            assert by_name[name] == nbytes, name
    # the vision tower, embeddings and lm_head (1.77B of 7B's 8.29B parameters) stay in bf16
    ratio = quantised.weight_bytes / plain.weight_bytes
    assert (0.40 < ratio < 0.43) if kind == "nf4" else (0.59 < ratio < 0.62)
    row = plan_memory(request).devices[0]
    assert row["dequant_bytes"] == 2 * 18944 * 3584  # the largest quantised linear in bf16
    assert plan_memory(PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"))).devices[0]["dequant_bytes"] == 0


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantised_bytes_are_what_bitsandbytes_holds(demo, demo_config, kind):
    """The demo loaded through load_model: every quantised weight's tensors, constants included,
    add up to the planner's bytes for it."""
    import bitsandbytes as bnb

    from workbench.training.loading import load_model

    model = load_model(str(demo.model), demo_config.replace(model={"quantization": kind}))
    layout = layout_for(PlanRequest("demo", parse_gpu_spec("1x24GiB"), quantization=kind))
    planned = dict(layout.param_bytes)
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            tensors = [module.weight, state.absmax, state.code, state.state2.absmax, state.state2.code]
        elif isinstance(module, bnb.nn.Linear8bitLt):
            tensors = [module.weight, module.weight.SCB]
        else:
            continue
        held = sum(t.numel() * t.element_size() for t in tensors)
        assert held == planned[name + ".weight"], name
        checked += 1
    assert checked == 14


def test_dequantisation_working_set_is_one_weight_in_the_compute_dtype():
    """A 4-bit linear's forward + backward holds its weight dequantised: W x 4 bytes in fp32 on CPU."""
    import bitsandbytes as bnb

    from planner_accuracy import LiveStorage

    layer = bnb.nn.Linear4bit(512, 1024, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                              quant_storage=torch.float32)
    layer.weight = bnb.nn.Params4bit(torch.randn(1024, 512), requires_grad=False, quant_type="nf4",
                                     quant_storage=torch.float32)._quantize("cpu")
    x = torch.randn(4, 512, requires_grad=True)
    state = layer.weight.quant_state
    with LiveStorage([layer.weight, x, state.absmax, state.code, state.state2.absmax, state.state2.code]) as tracker:
        layer(x).sum().backward()
    predicted = terms.dequantization_bytes(1024 * 512, act_bytes=4)
    assert predicted <= tracker.peak < predicted * 1.1


def test_trained_token_loss_peak_matches_its_term():
    """The loss part of a step on CPU (hidden states in, their gradient out) against 12 x min(N, chunk) x V."""
    from planner_accuracy import LiveStorage

    from workbench.training.loss import trained_token_loss_sum

    vocab, hidden = 8192, 64
    lm_head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    for trained, chunk in ((40, 1000), (300, 100)):
        labels = torch.full((1, 400), -100)
        labels[0, -trained:] = torch.randint(0, vocab, (trained,))
        states = torch.randn(1, 400, hidden, requires_grad=True)
        with LiveStorage([states, labels, lm_head.weight]) as tracker:
            total, count = trained_token_loss_sum(lm_head, states, labels, chunk)
            total.backward()
        predicted = terms.LOGITS_BYTES_PER_ELEMENT * min(count, chunk) * vocab
        assert abs(tracker.peak / predicted - 1) < 0.15, (trained, chunk, tracker.peak, predicted)


def test_the_step_counts_trained_rows_per_batch():
    request = PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"), batch_size=4, trained_tokens=50)
    step = step_for(request, layout_for(request))
    assert step.trained_tokens == 50 and step.logits_bytes(152064) == 12 * 200 * 152064


def test_no_misleading_auto_comparison_for_a_quantised_base():
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("2x40GiB"), quantization="nf4",
                                   strategy="device_map"))
    assert plan.fits and plan.map_source == "planner"
    assert plan.accelerate_auto["devices"] == [] and "quantised base" in plan.accelerate_auto["summary"]
