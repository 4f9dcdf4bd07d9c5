"""Presets, config loading (never downloading) and the meta model."""

import json

import pytest

from workbench.errors import UserError
from workbench.models import PRESETS, build_meta_model, count_parameters, load_model_config

PRESET_PARAMETERS = {name: p.parameters for name, p in PRESETS.items()}


@pytest.mark.parametrize("name,total", sorted(PRESET_PARAMETERS.items()))
def test_preset_parameter_totals(name, total):
    assert count_parameters(build_meta_model(load_model_config(name))) == total


# The published totals: Qwen2-VL's exact counts; for Qwen2.5-VL and Qwen3-VL the "Model size" of
# each checkpoint's Hugging Face page, which is rounded (sources in docs/families.md): the bundled
# configs must give that figure within 0.5%.
PUBLISHED = {"qwen2-vl-2b-instruct": 2_208_985_600, "qwen2-vl-7b-instruct": 8_291_375_616,
             "qwen2-vl-72b-instruct": 73_405_560_320,
             "qwen2.5-vl-3b-instruct": 3.75e9, "qwen2.5-vl-7b-instruct": 8.29e9, "qwen2.5-vl-32b-instruct": 33.5e9,
             "qwen2.5-vl-72b-instruct": 73.4e9, "qwen3-vl-2b-instruct": 2.13e9, "qwen3-vl-4b-instruct": 4.44e9,
             "qwen3-vl-8b-instruct": 8.77e9, "qwen3-vl-32b-instruct": 33.4e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_totals_are_the_published_ones(name):
    published, total = PUBLISHED[name], PRESET_PARAMETERS[name]
    if isinstance(published, int):
        assert total == published
    else:
        assert abs(total - published) <= 0.005 * published, (name, total)
    assert set(PRESET_PARAMETERS) == set(PUBLISHED)


def test_presets_are_nested_transformers5_configs():
    cfg = load_model_config("qwen2-vl-72b-instruct")
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size) == (8192, 80, 152064)
    assert cfg.vision_config.hidden_size == 8192 and cfg.vision_config.depth == 32
    assert cfg.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    raw = json.loads(PRESETS["qwen2-vl-2b-instruct"].config_file.read_text())
    assert raw["tie_word_embeddings"] is True and "text_config" in raw and "vision_config" in raw


def test_2b_ties_lm_head_to_embeddings():
    model = build_meta_model(load_model_config("qwen2-vl-2b-instruct"))
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert next(model.parameters()).device.type == "meta"


def test_meta_model_is_cached_and_typed():
    cfg = load_model_config("qwen2-vl-7b-instruct")
    assert build_meta_model(cfg) is build_meta_model(load_model_config("Qwen/Qwen2-VL-7B-Instruct"))
    assert str(next(build_meta_model(cfg, "fp32").parameters()).dtype) == "torch.float32"


def test_local_folder_with_config(tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig(text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500,
                               "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
                  vision_config={"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}).save_pretrained(tmp_path)
    cfg = load_model_config(str(tmp_path))
    assert cfg.text_config.hidden_size == 64
    assert count_parameters(build_meta_model(cfg)) > 0


@pytest.mark.parametrize("bad", ["nope", "someone/not-cached-model", "", "   "])
def test_unknown_names_are_user_errors(bad):
    with pytest.raises(UserError):
        load_model_config(bad)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model_config(str(tmp_path))


def test_other_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(UserError, match="Qwen2-VL.*Qwen2.5-VL.*Qwen3-VL"):
        load_model_config(str(tmp_path))


@pytest.mark.parametrize("name", ["qwen3-vl-30b-a3b-instruct", "Qwen/Qwen3-VL-235B-A22B-Instruct"])
def test_moe_presets_say_not_supported_yet(name):
    with pytest.raises(UserError, match="not supported yet.*dense Qwen3-VL"):
        load_model_config(name)


def test_moe_folder_says_not_supported_yet(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl_moe"}))
    with pytest.raises(UserError, match="mixture-of-experts.*not supported yet"):
        load_model_config(str(tmp_path))


def test_broken_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError):
        load_model_config(str(tmp_path))
