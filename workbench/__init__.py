"""Qwen2-VL LoRA workbench: data preview, memory planning, training and inference.

The core (everything outside ``workbench.ui``) never imports gradio, so every
capability is usable headless through ``python -m workbench``.
"""

__version__ = "0.1.0"
