"""The merged export reproduces base + adapter: logits and greedy answers, on held-out rows.

The references are loaded with plain peft (``PeftModel.from_pretrained``) and the merged
folders with plain transformers (``AutoModelForImageTextToText``), never through the
workbench. The demo model is fp32, so the merge must agree to float rounding.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from export_helpers import (copy_processor, greedy, heldout_inputs, load_plain, load_with_adapter, logits,
                            max_difference, random_adapter, rewrite_keys, set_config)

# fp32 rounding through the vision tower and two decoder layers, relative to the largest logit
# (measured: at most 1.7e-5 on random adapters whose update moves the logits by about 10).
FP32_TOLERANCE = 3e-5
LANGUAGE = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
WITH_MERGER = r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|visual\.merger\.mlp\.(0|2))"
# peft's names of today (transformers 5) -> the older ones (model.layers.*, visual.* at the top).
LEGACY_ADAPTER = (("base_model.model.model.language_model.", "base_model.model.model."),
                  ("base_model.model.model.visual.", "base_model.model.visual."))


@pytest.fixture(scope="module")
def samples(demo):
    from workbench.inference import heldout_samples

    return heldout_samples(demo.heldout, 4)


@pytest.fixture(scope="module")
def inputs(demo, samples):
    from transformers import AutoProcessor

    return heldout_inputs(AutoProcessor.from_pretrained(str(demo.model)), samples)


@pytest.fixture(scope="module")
def run_reference(demo, trained_run, inputs):
    model = load_with_adapter(demo.model, trained_run.output_dir)
    return logits(model, inputs), greedy(model, inputs)


def close(actual: list, expected: list) -> bool:
    scale = max(1.0, max(float(e.abs().max()) for e in expected))
    return max_difference(actual, expected) <= FP32_TOLERANCE * scale


def far(actual: list, expected: list) -> bool:
    """Apart by far more than rounding: the adapter's update really is in the reference."""
    return not close(actual, expected) and max_difference(actual, expected) > 0.01


def merge(adapter, out, **kwargs) -> Path:
    from workbench.export import export

    return export(adapter, out, merge=True, **kwargs)


# ---------------------------------------------------------------------------- the trained run
def test_merged_run_equals_base_plus_adapter_and_answers_the_same(trained_run, run_reference, inputs, samples,
                                                                  demo, tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    out = merge(trained_run.output_dir, tmp_path / "merged", max_shard_size="300KB")
    assert (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((out / s).is_file() for s in shards)
    assert {"config.json", "generation_config.json", "chat_template.jinja", "processor_config.json",
            "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".*"))  # the staging folder was moved in, not left beside

    reference_logits, reference_answers = run_reference
    merged = load_plain(out)
    assert close(logits(merged, inputs), reference_logits)
    assert greedy(merged, inputs) == reference_answers
    # the family's own class loads it too, and the exported processor encodes exactly as the base's
    same = Qwen2VLForConditionalGeneration.from_pretrained(str(out)).eval()
    assert close(logits(same, inputs[:1]), reference_logits[:1])
    exported = heldout_inputs(AutoProcessor.from_pretrained(str(out)), samples)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(exported, inputs) for k in a)
    base = load_plain(demo.model)
    assert far(logits(base, inputs), reference_logits)  # the adapter matters


def test_bf16_merge_is_within_bf16_rounding(trained_run, run_reference, inputs, tmp_path):
    from safetensors import safe_open

    out = merge(trained_run.output_dir, tmp_path / "bf16", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    reference_logits, _ = run_reference
    scale = max(float(r.abs().max()) for r in reference_logits)
    difference = max_difference(logits(load_plain(out), inputs), reference_logits)
    assert 0 < difference < 0.02 * scale  # bf16 keeps 8 bits of mantissa: about 0.4% per weight


# ---------------------------------------------------------------------------- LoRA kinds and namings
VARIANTS = {
    "rslora-dora": dict(r=8, lora_alpha=16, target_modules=WITH_MERGER, use_rslora=True, use_dora=True),
    "patterns-bias-saved-head": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "proj", "fc1"],
                                     rank_pattern={"v_proj": 2}, alpha_pattern={"proj": 3}, bias="lora_only",
                                     modules_to_save=["lm_head"]),
    "embedding-conv3d": dict(r=4, lora_alpha=4, target_modules=["q_proj", "embed_tokens", "patch_embed.proj"]),
    "lora_bias": dict(r=4, lora_alpha=8, target_modules=["k_proj", "qkv"], lora_bias=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_kinds_merge_exactly(variant, demo, inputs, tmp_path):
    adapter = random_adapter(demo.model, tmp_path / "adapter", **VARIANTS[variant])
    reference = load_with_adapter(demo.model, adapter)
    out = merge(adapter, tmp_path / "merged")
    merged = load_plain(out)
    expected = logits(reference, inputs[:2])
    assert close(logits(merged, inputs[:2]), expected)
    assert far(logits(load_plain(demo.model), inputs[:2]), expected)


def test_both_checkpoint_namings_and_both_adapter_namings(demo, inputs, tmp_path):
    """Base keys model.layers.*/visual.* (hub) or model.language_model.*/model.visual.*, adapter keys of
    today's peft or of older transformers: all four pairs merge to the same model; the output keeps
    the base's own names."""
    from safetensors import safe_open

    from workbench.models.families import FAMILIES

    adapter = random_adapter(demo.model, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=WITH_MERGER)
    expected = logits(load_with_adapter(demo.model, adapter), inputs[:2])

    def legacy(key):
        for new, old in LEGACY_ADAPTER:
            key = key.replace(new, old)
        return key

    old_adapter = rewrite_keys(adapter, tmp_path / "adapter-old", legacy, files=("adapter_model.safetensors",))
    assert any(k.startswith("base_model.model.visual.") for k in safe_open(str(old_adapter / "adapter_model.safetensors"), "pt").keys())
    new_base = rewrite_keys(demo.model, tmp_path / "base-new", FAMILIES["qwen2_vl"].module_name)
    for base, base_keys in ((demo.model, r"^(model\.layers|visual\.|model\.embed|model\.norm|lm_head)"),
                            (new_base, r"^(model\.language_model\.|model\.visual\.|lm_head)")):
        for name, folder in (("new", adapter), ("old", old_adapter)):
            out = merge(folder, tmp_path / f"merged-{Path(base).name}-{name}", base=str(base))
            with safe_open(str(out / "model.safetensors"), "pt") as f:
                assert all(re.match(base_keys, k) for k in f.keys()), list(f.keys())[:5]
            assert close(logits(load_plain(out), inputs[:2]), expected), (base, name)


@pytest.fixture(scope="module")
def tied_base(demo, tmp_path_factory):
    """The demo with lm_head tied to the input embeddings (as Qwen2-VL-2B is)."""
    from transformers import Qwen2VLForConditionalGeneration

    from safetensors import safe_open

    folder = tmp_path_factory.mktemp("tied-base")
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(demo.model))
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.get_input_embeddings().weight
    model.save_pretrained(str(folder))
    copy_processor(Path(demo.model), folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # as in Qwen2-VL-2B: the head is the embedding
    loaded = Qwen2VLForConditionalGeneration.from_pretrained(str(folder))
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    return folder


@pytest.mark.parametrize("lora", [dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
                                  dict(target_modules=["q_proj", "lm_head"]),
                                  dict(target_modules=["q_proj", "embed_tokens"]),
                                  dict(target_modules=["q_proj", "embed_tokens", "lm_head"], ensure_weight_tying=True),
                                  dict(target_modules=["q_proj", "v_proj"])],
                         ids=["saved-head", "lora-head", "lora-embedding", "lora-both-tied", "untouched"])
def test_tied_embeddings_stay_consistent(lora, tied_base, inputs, tmp_path):
    adapter = random_adapter(tied_base, tmp_path / "adapter", r=4, lora_alpha=8, **lora)
    expected = logits(load_with_adapter(tied_base, adapter), inputs[:2])
    out = merge(adapter, tmp_path / "merged")
    config = json.loads((out / "config.json").read_text())
    changes_head = any("lm_head" in str(v) or "embed_tokens" in str(v) for v in lora.values())
    assert config["tie_word_embeddings"] is (not changes_head)
    merged = load_plain(out)
    assert close(logits(merged, inputs[:2]), expected)
    tied_now = merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    assert tied_now is (not changes_head)


def test_merge_memory_follows_the_shard_not_the_model(trained_run, tmp_path):
    """The plan holds one output shard at a time: with small shards, no shard exceeds the limit
    unless one tensor alone does."""
    from workbench.export import plan_export

    plan = plan_export(trained_run.output_dir, tmp_path / "out", merge=True, max_shard_size="100KB")
    largest_tensor = max(t.nbytes for t in plan.merge_plan.tensors.values())
    assert len(plan.merge_plan.shards) > 3
    assert plan.merge_plan.largest_shard_bytes <= max(100_000, largest_tensor)
    assert plan.merge_plan.total_bytes == sum(t.nbytes for t in plan.merge_plan.tensors.values())
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_qwen2_5_vl_merges_by_the_same_name_patterns(tmp_path):
    """Families are rows of a table: Qwen2.5-VL (window attention, its own merger) needs no code."""
    from safetensors import safe_open
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=56))
    torch.manual_seed(0)
    base = tmp_path / "qwen2.5-vl"
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(str(base))
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        assert any(k.startswith("visual.merger.mlp.0") for k in f.keys())  # hub naming on disk
    adapter = random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=WITH_MERGER)
    ids = [{"input_ids": torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(1))}]
    expected = logits(load_with_adapter(base, adapter), ids)
    merged = load_plain(merge(adapter, tmp_path / "merged"))
    assert type(merged).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert close(logits(merged, ids), expected) and far(logits(load_plain(base), ids), expected)
    reference = load_with_adapter(base, adapter).merge_and_unload()  # the vision merger too (text inputs skip it)
    assert torch.allclose(merged.model.visual.merger.mlp[0].weight, reference.model.visual.merger.mlp[0].weight,
                          atol=1e-6)
    assert not torch.allclose(merged.model.visual.merger.mlp[0].weight,
                              load_plain(base).model.visual.merger.mlp[0].weight, atol=1e-3)


def test_qwen3_vl_merges_with_its_deepstack_mergers(tmp_path):
    """Qwen3-VL: checkpoints already carry the module names; LoRA on the merger and the deepstack
    mergers (the family's language-and-merger preset) folds in like any other linear."""
    from workbench.demo_model import build_tokenizer, demo_model_config
    from workbench.models.families import QWEN3_VL

    torch.manual_seed(0)
    config = demo_model_config(build_tokenizer(QWEN3_VL.template_text), QWEN3_VL)
    base = tmp_path / "qwen3-vl"
    QWEN3_VL.transformers_class("model_class")(config).save_pretrained(str(base))
    adapter = random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8,
                             target_modules=QWEN3_VL.target_presets()["language-and-merger"])
    ids = [{"input_ids": torch.randint(20, 500, (1, 24), generator=torch.Generator().manual_seed(1))}]
    expected = logits(load_with_adapter(base, adapter), ids)
    merged = load_plain(merge(adapter, tmp_path / "merged"))
    assert type(merged).__name__ == "Qwen3VLForConditionalGeneration"
    assert close(logits(merged, ids), expected) and far(logits(load_plain(base), ids), expected)
    reference = load_with_adapter(base, adapter).merge_and_unload()
    deepstack = merged.model.visual.deepstack_merger_list[0].linear_fc1.weight
    assert torch.allclose(deepstack, reference.model.visual.deepstack_merger_list[0].linear_fc1.weight, atol=1e-6)
    assert not torch.allclose(deepstack, load_plain(base).model.visual.deepstack_merger_list[0].linear_fc1.weight,
                              atol=1e-3)


def test_adapter_trained_on_a_4bit_base_merges_into_the_full_precision_base(demo, inputs, tmp_path):
    """QLoRA: peft saves the same pieces over bitsandbytes' Linear4bit, so the merge folds them into
    the unquantised base the run names, and equals that base + the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    quantised = Qwen2VLForConditionalGeneration.from_pretrained(
        str(demo.model), device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.float32))
    assert type(quantised.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    peft_model = get_peft_model(quantised, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                      init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "qlora"))
    expected = logits(load_with_adapter(demo.model, tmp_path / "qlora"), inputs[:2])
    merged = load_plain(merge(tmp_path / "qlora", tmp_path / "merged"))
    assert close(logits(merged, inputs[:2]), expected)
    assert far(logits(load_plain(demo.model), inputs[:2]), expected)
