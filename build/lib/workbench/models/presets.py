"""Presets: short names for the published checkpoints, their hub ids and bundled configs.

A preset plans with its bundled ``config.json`` (no download); training and inference load
its weights from the hub id, through the Hugging Face cache (``workbench.models.resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+
    from importlib.resources.abc import Traversable

# Package data (workbench/assets), read through importlib.resources so an installed wheel finds it too.
ASSETS = files("workbench") / "assets" / "models"


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    parameters: int  # the published checkpoint's total (tests pin the bundled config to it)

    @property
    def config_file(self) -> Traversable:
        return ASSETS / f"{self.name}.json"


_ALL = (
    Preset("qwen2-vl-2b-instruct", "Qwen/Qwen2-VL-2B-Instruct", 2_208_985_600),
    Preset("qwen2-vl-7b-instruct", "Qwen/Qwen2-VL-7B-Instruct", 8_291_375_616),
    Preset("qwen2-vl-72b-instruct", "Qwen/Qwen2-VL-72B-Instruct", 73_405_560_320),
    # Qwen2.5-VL and Qwen3-VL: the totals the bundled configs give; tests pin them within 0.5% of
    # the published "Model size" figures (docs/families.md lists the figures and their sources).
    Preset("qwen2.5-vl-3b-instruct", "Qwen/Qwen2.5-VL-3B-Instruct", 3_754_622_976),
    Preset("qwen2.5-vl-7b-instruct", "Qwen/Qwen2.5-VL-7B-Instruct", 8_292_166_656),
    Preset("qwen2.5-vl-32b-instruct", "Qwen/Qwen2.5-VL-32B-Instruct", 33_448_292_352),
    Preset("qwen2.5-vl-72b-instruct", "Qwen/Qwen2.5-VL-72B-Instruct", 73_406_351_360),
    Preset("qwen3-vl-2b-instruct", "Qwen/Qwen3-VL-2B-Instruct", 2_127_532_032),
    Preset("qwen3-vl-4b-instruct", "Qwen/Qwen3-VL-4B-Instruct", 4_437_815_808),
    Preset("qwen3-vl-8b-instruct", "Qwen/Qwen3-VL-8B-Instruct", 8_767_123_696),
    Preset("qwen3-vl-32b-instruct", "Qwen/Qwen3-VL-32B-Instruct", 33_357_390_064),
)
# Published checkpoints the workbench knows but cannot train yet: the name answers with why.
UNSUPPORTED = {
    "qwen3-vl-30b-a3b-instruct": ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe"),
    "qwen3-vl-235b-a22b-instruct": ("Qwen/Qwen3-VL-235B-A22B-Instruct", "qwen3_vl_moe"),
}
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def preset_for(name_or_path: str) -> Preset | None:
    """The preset named ``name_or_path``, by its short name or its hub id (any case)."""
    key = str(name_or_path or "").strip().lower()
    for preset in _ALL:
        if key in (preset.name, preset.hub_id.lower()):
            return preset
    return None


def check_supported(name_or_path: str) -> None:
    """A UserError naming why, for a known checkpoint the workbench does not train yet (MoE)."""
    from workbench.models.families import family_for

    key = str(name_or_path or "").strip().lower()
    for name, (hub_id, model_type) in UNSUPPORTED.items():
        if key in (name, hub_id.lower()):
            family_for(model_type, where=hub_id)


def preset_name(name_or_path: str) -> str | None:
    preset = preset_for(name_or_path)
    return preset.name if preset else None
