"""Assembles the tabs into one Blocks app and wires them to each other, explicitly.

Each tab module has ``build(ctx)`` and returns what other tabs may listen to; this module is
the only place where one tab's event reaches another tab's widgets. Every handler runs
inside ``answer_with_a_sentence``: an unexpected error becomes one sentence in the page
(its traceback goes to the log), never a bare "Error".
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from workbench.errors import UserError  # noqa: E402
from workbench.settings import RunConfig  # noqa: E402

TABS = ("Dataset", "Memory planner", "LoRA", "Training", "Inference", "Export")
log = logging.getLogger("workbench.ui")


@dataclass
class LaunchOptions:
    model: str = "demo"
    dataset: str = ""
    max_file_size: str = "200mb"


@dataclass
class TabContext:
    """What every tab receives: the launch options, the process's session, this browser's config."""

    options: LaunchOptions
    session: object  # workbench.session.Workbench
    config: gr.State  # RunConfig.to_dict() of this browser session


def initial_config(options: LaunchOptions) -> dict:
    from workbench.demo import DEMO_TRAINING, DEMO_VIDEO_TRAINING, is_demo
    from workbench.demo_video import is_demo_dataset

    demo = DEMO_VIDEO_TRAINING if is_demo_dataset(options.dataset or "") else DEMO_TRAINING
    config = RunConfig.from_dict(demo) if is_demo(options.model) else RunConfig()
    return config.replace(model={"name_or_path": options.model},
                          data={"train_path": options.dataset}).to_dict()


def answer_with_a_sentence(fn):
    """A handler that never shows a bare "Error": people get a sentence, the log the traceback."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - a bug: the person gets a sentence, the log the details
            from workbench.paths import log_file

            log.exception("handler %s failed", getattr(fn, "__name__", fn))
            raise gr.Error(f"Something went wrong ({type(exc).__name__}: {str(exc)[:200]}). This looks like a bug "
                           f"in the workbench; the details are in {log_file()}.", print_exception=False) from None

    return guarded


def build_app(options: LaunchOptions | None = None, session=None) -> gr.Blocks:
    from workbench.session import Workbench
    from workbench.ui import dataset_tab, export_tab, inference_tab, lora_tab, planner_tab, training_tab

    options = options or LaunchOptions()
    session = session or Workbench()
    with gr.Blocks(title="Qwen-VL LoRA workbench", analytics_enabled=False) as app:
        gr.Markdown("## Qwen-VL LoRA workbench\nIs my data right? Will it fit? Is it training? Did it help?")
        ctx = TabContext(options=options, session=session, config=gr.State(initial_config(options)))
        with gr.Tab("Dataset", id="dataset"):
            dataset = dataset_tab.build(ctx)
        with gr.Tab("Memory planner", id="memory-planner"):
            planner = planner_tab.build(ctx)
        with gr.Tab("LoRA", id="lora"):
            lora = lora_tab.build(ctx)
        with gr.Tab("Training", id="training"):
            training = training_tab.build(ctx, plan=planner["plan"])
        with gr.Tab("Inference", id="inference"):
            inference_tab.build(ctx)
        with gr.Tab("Export", id="export"):
            export_tab.build(ctx)
        # The LoRA form re-renders only when another tab (or a loaded file) replaced the config.
        for replaced in (dataset["used"], planner["applied"], lora.loaded, training.skip_set):
            replaced.then(lora_tab.refill, inputs=ctx.config, outputs=lora.outputs, show_progress="hidden")
        # the Training tab's checkbox counts the problem rows of the file the Dataset tab chose
        dataset["used"].then(training_tab.skip_choice, inputs=[ctx.config, dataset["report"]],
                             outputs=training.skip, show_progress="hidden")
    for block_fn in app.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = answer_with_a_sentence(block_fn.fn)
    app.workbench = session
    return app
