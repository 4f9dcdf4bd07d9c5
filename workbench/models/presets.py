"""Presets: short names for the published checkpoints, their hub ids and bundled configs.

A preset plans with its bundled ``config.json`` (no download); training and inference load
its weights from the hub id, through the Hugging Face cache (``workbench.models.resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "models"


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    parameters: int  # the published checkpoint's total (tests pin the bundled config to it)

    @property
    def config_file(self) -> Path:
        return ASSETS / f"{self.name}.json"


_ALL = (
    Preset("qwen2-vl-2b-instruct", "Qwen/Qwen2-VL-2B-Instruct", 2_208_985_600),
    Preset("qwen2-vl-7b-instruct", "Qwen/Qwen2-VL-7B-Instruct", 8_291_375_616),
    Preset("qwen2-vl-72b-instruct", "Qwen/Qwen2-VL-72B-Instruct", 73_405_560_320),
)
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def preset_for(name_or_path: str) -> Preset | None:
    """The preset named ``name_or_path``, by its short name or its hub id (any case)."""
    key = str(name_or_path or "").strip().lower()
    for preset in _ALL:
        if key in (preset.name, preset.hub_id.lower()):
            return preset
    return None


def preset_name(name_or_path: str) -> str | None:
    preset = preset_for(name_or_path)
    return preset.name if preset else None
