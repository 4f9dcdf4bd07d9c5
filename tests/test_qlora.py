"""QLoRA: a 4-bit (or 8-bit) base while training, a plain adapter for the unquantised base after.

bitsandbytes runs its 4-bit and 8-bit kernels on the CPU here (slowly; the demo is tiny)."""

import json

import pytest
import torch
import yaml

from conftest import run_cli


def quantised_modules(model):
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name for name, module in model.named_modules() if isinstance(module, kinds)}


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_language_linears_are_quantised_vision_and_lm_head_are_not(demo, demo_config, kind):
    from workbench.training.loading import load_model, pick_dtype
    from workbench.training.lora import apply_lora, is_quantized

    config = demo_config.replace(model={"quantization": kind})
    model = load_model(str(demo.model), config)
    assert is_quantized(model)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantised = quantised_modules(model)
    language = {n for n in linears if ".language_model." in n}
    assert quantised == language and len(language) == 14  # 2 layers x 7 linears
    dtype = pick_dtype(config.model.dtype)
    assert model.lm_head.weight.dtype == dtype
    assert all(p.dtype == dtype for p in model.model.visual.parameters())
    if kind == "nf4":
        layer = model.model.language_model.layers[0].self_attn.q_proj
        assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
    model = apply_lora(model, config.lora, gradient_checkpointing=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_on_4bit = type(model.base_model.model.model.language_model.layers[0].mlp.down_proj)
    assert lora_on_4bit.__module__.startswith("peft.tuners.lora.bnb")
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_qlora_run_from_the_cli_gives_a_plain_adapter_for_the_unquantised_base(demo, demo_config, tmp_path):
    from workbench.data.collate import SampleEncoder
    from workbench.data.formats import load_samples
    from workbench.inference import Comparer

    config_file = tmp_path / "qlora.yaml"
    raw = demo_config.replace(model={"quantization": "nf4"}).to_dict()
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    result = run_cli("train", config_file, "--output-dir", out, "--max-steps", 60, "--save-steps", 0)
    assert result.returncode == 0, result.stderr
    # bitsandbytes' import-time warning about an optional CPU kernel goes to the log only
    assert "kernels-community" not in result.stdout + result.stderr
    assert yaml.safe_load((out / "run.yaml").read_text())["model"]["quantization"] == "nf4"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and "quantization_config" not in json.dumps(adapter)

    served = Comparer("demo", out, yaml_config(out))  # the run says nf4; inference loads unquantised
    assert not quantised_modules(served.model)
    trained_on = Comparer("demo", out, yaml_config(out), quantization="nf4")
    assert quantised_modules(trained_on.model)
    # teacher-forced log-probabilities of the expected answer tokens of the held-out rows:
    # moving the adapter from the 4-bit base to the unquantised one shifts them far less
    # than the adapter itself moved them (its effect carries over to the served base)
    encoder = SampleEncoder(served.processor, 256, 3136, 112 * 112)
    quantisation_shift = adapter_shift = agree = total = 0.0
    for sample in load_samples(demo.heldout).samples:
        item = encoder.encode(sample)
        inputs = {k: (v.unsqueeze(0) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
                  for k, v in item.items() if k != "labels"}
        trained = item["labels"][1:] != -100
        targets = item["labels"][1:][trained]

        def answer_logprobs(comparer, adapter_on=True):
            import contextlib

            off = contextlib.nullcontext() if adapter_on else comparer.model.disable_adapter()
            with torch.inference_mode(), off:
                logits = comparer.model(**inputs).logits[0, :-1][trained].float()
            return logits.log_softmax(-1), logits.argmax(-1)

        (on_served, pick_served), (on_trained, pick_trained) = answer_logprobs(served), answer_logprobs(trained_on)
        base, _ = answer_logprobs(served, adapter_on=False)
        picked = lambda logprobs: logprobs.gather(1, targets[:, None])[:, 0]  # noqa: E731
        quantisation_shift += float((picked(on_served) - picked(on_trained)).abs().sum())
        adapter_shift += float((picked(on_served) - picked(base)).abs().sum())
        agree += int((pick_served == pick_trained).sum())
        total += len(targets)
    print(f"answer tokens {total:.0f}: same choice {agree / total:.3f}, mean |log p| shift "
          f"quantisation {quantisation_shift / total:.3f} vs adapter {adapter_shift / total:.3f}")
    assert total >= 80 and agree / total >= 0.85
    assert quantisation_shift < 0.05 * adapter_shift


def yaml_config(run_dir):
    from workbench.settings import RunConfig

    return RunConfig.load(run_dir / "run.yaml")


def test_the_lora_form_offers_the_quantisation_and_refuses_unknown_ones(demo_config):
    from workbench.ui import lora_tab

    assert lora_tab.CHOICES[("model", "quantization")] == ["none", "nf4", "int8"]
    config = demo_config.to_dict()
    values = dict(zip(lora_tab.KEYS, lora_tab.form_values(config)))
    assert values["model.quantization"] == "none"
    for choice, ok in (("nf4", True), ("int4", False)):
        values["model.quantization"] = choice
        shared, message, _, _ = lora_tab.apply_form(config, *[values[k] for k in lora_tab.KEYS])
        if ok:
            assert message == "Settings are valid." and shared["model"]["quantization"] == "nf4"
        else:
            assert shared is config and "model.quantization 'int4' is not one of none, nf4, int8" in message
