"""Assembles the five tabs into one Blocks app. Each tab module has ``build(state)``."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from workbench.settings import RunConfig  # noqa: E402
from workbench.ui.state import AppState, LaunchOptions  # noqa: E402

TABS = ("Dataset", "Memory planner", "LoRA", "Training", "Inference", "Export")


def initial_config(options: LaunchOptions) -> dict:
    from workbench.demo import DEMO_TRAINING, is_demo

    config = RunConfig.from_dict(DEMO_TRAINING) if is_demo(options.model) else RunConfig()
    return config.replace(model={"name_or_path": options.model},
                          data={"train_path": options.dataset}).to_dict()


def build_app(options: LaunchOptions | None = None) -> gr.Blocks:
    from workbench.ui import dataset_tab, export_tab, inference_tab, lora_tab, planner_tab, training_tab

    options = options or LaunchOptions()
    tabs = dict(zip(TABS, (dataset_tab, planner_tab, lora_tab, training_tab, inference_tab, export_tab)))
    with gr.Blocks(title="Qwen2-VL LoRA workbench", analytics_enabled=False) as app:
        gr.Markdown("## Qwen2-VL LoRA workbench\nIs my data right? Will it fit? Is it training? Did it help?")
        state = AppState(options=options, config=gr.State(initial_config(options)))
        for title in TABS:
            with gr.Tab(title, id=title.lower().replace(" ", "-")):
                tabs[title].build(state)
    return app
