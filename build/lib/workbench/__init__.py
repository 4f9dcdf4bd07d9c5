"""Qwen-VL LoRA workbench: data preview, memory planning, training, inference and export.

The core (everything outside ``workbench.ui``) never imports gradio, so every
capability is usable headless through ``python -m workbench``.
"""

import warnings

__version__ = "0.3.0"

# peft probes transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model:
# a warning about peft's code, not the user's, printed on every train and infer.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
