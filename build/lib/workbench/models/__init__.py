"""Models: presets, configs and meta-device builds (no weights), and one model resolution.

    from workbench.models import load_model_config, build_meta_model, locate_model, fetch_model
"""

from workbench.models.config import (build_meta_model, config_from_json, count_parameters, family_of_model,
                                     load_model_config)
from workbench.models.families import FAMILIES, Family, family_for, family_of
from workbench.models.presets import PRESETS, Preset, preset_for, preset_name
from workbench.models.resolve import ModelSource, fetch_model, locate_model

__all__ = ["FAMILIES", "Family", "family_for", "family_of", "family_of_model", "config_from_json", "PRESETS", "Preset", "preset_for",
           "preset_name", "load_model_config", "build_meta_model", "count_parameters", "ModelSource", "locate_model",
           "fetch_model"]
