"""Model configs and models built on the meta device (no weights, no downloads).

The presets' configs are the published ``config.json`` of the Qwen2-VL, Qwen2.5-VL and
Qwen3-VL Instruct checkpoints, written in transformers 5's nested layout (``text_config`` /
``vision_config``) under ``workbench/assets/models/``. ``load_model_config`` accepts a preset name or
its hub id, a demo name, a local folder holding a ``config.json``, or a hub id already in
the Hugging Face cache; it never downloads. The family (``workbench.models.families``) comes
from the config's ``model_type``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from workbench.errors import UserError

from workbench.models.families import Family, family_for
from workbench.models.presets import PRESETS, check_supported, preset_for


def load_model_config(name_or_path: str):
    """The transformers config (its family's class) for a preset, a demo, a local folder or a cached hub id.

    Raises ``UserError`` (one sentence) for unknown names, folders without ``config.json``,
    configs of another architecture and known models not supported yet (MoE). Never downloads.
    """
    from workbench.demo import ensure_demo, is_demo

    text = str(name_or_path or "").strip()
    if not text:
        raise UserError("The model is empty: give a preset (" + ", ".join(PRESETS) + "), 'demo' or a local model folder.")
    check_supported(text)
    preset = preset_for(text)
    if preset:
        return _from_json_file(preset.config_file)
    if is_demo(text):
        return _from_json_file(ensure_demo(name=text).model / "config.json")
    path = Path(text).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        return _from_json_file(path)
    if path.is_file():
        raise UserError(f"{path} is a file, not a model: point --model at the model folder (the one "
                        "holding config.json), or at that config.json.")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"The folder {path} has no config.json: point --model at a Qwen-VL model folder (the one holding config.json).")
        return _from_json_file(path / "config.json")
    cached = _cached_hub_config(text)
    if cached:
        return _from_json_file(cached)
    raise UserError(
        f"Unknown model '{text}': use a preset ({', '.join(PRESETS)}), 'demo', a local folder with a "
        "config.json, or a hub id already downloaded to the Hugging Face cache."
    )


def family_of_model(name_or_path: str) -> Family | None:
    """The family of a model from its config on this machine (bundled for presets), never from its
    name; None when no config is found or the model is not supported."""
    try:
        return family_for(load_model_config(name_or_path).model_type)
    except UserError:
        return None


def _cached_hub_config(repo_id: str) -> Path | None:
    """The cached config.json of a hub id, or None; looks only at the local cache."""
    from workbench.models.resolve import cached_snapshot, looks_like_path

    if repo_id.count("/") != 1 or looks_like_path(repo_id):
        return None
    snapshot = cached_snapshot(repo_id)
    return snapshot / "config.json" if snapshot else None


def _from_json_file(path: Path):
    try:
        raw = json.loads((Path(path) if isinstance(path, str) else path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON config ({exc}): fix or replace the file.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a model config (a JSON object is expected).")
    family = family_for(raw.get("model_type"), where=str(path))
    try:
        config = family.transformers_class("config_class").from_dict(raw)
    except Exception as exc:  # transformers' own validation of the values
        raise UserError(f"{path} is not a valid {family.name} config ({str(exc)[:200]}): fix or replace the file.") from None
    _check_sizes(config, family, path)
    return config


def config_from_json(config_json: str):
    """A config back from ``to_json_string`` (the cache key of meta builds and layouts)."""
    raw = json.loads(config_json)
    return family_for(raw.get("model_type")).transformers_class("config_class").from_dict(raw)


# Sizes a config must give as positive whole numbers (transformers checks none of them); the
# vision tower's width key is the family's.
_TEXT_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "max_position_embeddings")
_VISION_SIZES = ("depth", "num_heads", "patch_size", "spatial_merge_size", "temporal_patch_size", "in_channels")
# Larger than any published model by far: such a value is a typo (and would make the meta model huge).
_MAX_SIZE = 10**7


def _check_sizes(config, family: Family, path) -> None:
    for section, names in (("text_config", _TEXT_SIZES), ("vision_config", _VISION_SIZES + (family.vision_width_key,))):
        sub = getattr(config, section)
        for name in names:
            value = getattr(sub, name, None)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SIZE:
                raise UserError(f"{path}: {section}.{name} is {value!r}, not a positive whole number up to "
                                f"{_MAX_SIZE}: fix the config.")
    text = config.text_config
    if text.hidden_size % text.num_attention_heads or text.num_attention_heads % text.num_key_value_heads:
        raise UserError(f"{path}: hidden_size {text.hidden_size}, num_attention_heads {text.num_attention_heads} "
                        f"and num_key_value_heads {text.num_key_value_heads} do not divide evenly: fix the config.")


def _dtype(dtype):
    import torch

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
             "auto": torch.bfloat16, None: torch.bfloat16}
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in names:
        raise UserError(f"Unknown dtype '{dtype}': use bf16, fp16 or fp32.")
    return names[dtype]


def build_meta_model(config, dtype="bf16"):
    """The family's model class (``Qwen2VLForConditionalGeneration``, ...) on the meta device, weights tied, in ``dtype``.

    Built under ``torch.device("meta")`` (no memory, no download, nothing process-global
    touched). Cached per (config, dtype): repeated plans are free. Treat the returned model
    as read-only.
    """
    key = config.to_json_string(use_diff=False)
    return _build_cached(key, str(_dtype(dtype)).removeprefix("torch."))


@functools.lru_cache(maxsize=8)
def _build_cached(config_json: str, dtype_name: str):
    import torch

    config = config_from_json(config_json)
    model_class = family_for(config.model_type).transformers_class("model_class")
    # torch.device("meta") is a thread-local mode: unlike accelerate's init_empty_weights (which
    # patches nn.Module for every thread) or torch.set_default_dtype (process-wide), it cannot
    # leak into a training job or a model load running in another thread of the app.
    with torch.device("meta"):
        model = model_class(config)
    model.to(getattr(torch, dtype_name))
    model.tie_weights()
    model.requires_grad_(False)
    return model


def count_parameters(model_or_config) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    model = model_or_config
    if not hasattr(model, "parameters"):
        model = build_meta_model(model_or_config)
    return sum(p.numel() for p in model.parameters())
