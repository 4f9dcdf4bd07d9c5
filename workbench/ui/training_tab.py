"""Training tab: Start/Stop, state, progress with ETA, live loss and per-device memory, log tail.

The job lives in the process (``workbench.training.current_job``), not in a browser
session, so a reloaded page or a second browser tab shows the same run. A 1 s timer
polls it; the plots are rebuilt only when new metric rows arrived, and each series is
decimated (``workbench.training.series``), so a tick stays cheap on long runs.
"""

from __future__ import annotations

import gradio as gr

from workbench.errors import UserError
from workbench.training import current_job, start_job
from workbench.training.checks import check_run_config, config_from_raw
from workbench.training.series import loss_frame, memory_frame, predicted_peaks

TICK_SECONDS = 1.0
LOG_LINES = 40


# ---- handlers (plain functions: values in, values out) ----------------------------
def start(config: dict) -> str:
    """The Start button: check the shared settings, then start the one job of this process."""
    try:
        cfg = config_from_raw(config)
        check_run_config(cfg)
        if current_job() is None or not current_job().running:
            from workbench.ui.inference_tab import release_comparer

            release_comparer()  # the Inference tab's cached model must not hold memory during training
        job = start_job(cfg)
    except UserError as exc:
        gr.Warning(str(exc))
        return f"**Not started:** {exc}"
    return f"Started: run folder `{job.output_dir}`."


def stop() -> str:
    job = current_job()
    if job is None:
        return "Nothing is running."
    return job.request_stop()


def tick(view: dict | None, config: dict | None = None, plan: dict | None = None):
    """One timer tick -> (status, progress, loss plot, memory plot, log, view, run folder).

    ``view`` remembers which job and how many metric rows this browser already shows;
    plots are sent again only when that changed (``gr.skip()`` otherwise).
    """
    job = current_job()
    view = dict(view or {})
    if job is None:
        return ("No training run in this process yet. Check the settings in the LoRA tab, then press Start.",
                progress_html(None), gr.skip(), gr.skip(), "", view, gr.skip())
    status = job.status()
    rows_seen = len(job.metrics) if job.metrics is not None else 0
    predicted = predicted_peaks((config or {}).get("plan")) or predicted_peaks(plan)
    key = [str(job.output_dir), rows_seen, sorted(predicted.items())]
    if view.get("key") != key:
        rows = job.metrics.since(0) if job.metrics is not None else []
        # An empty frame would fix the plot's axes as categorical for good (Gradio 6.31
        # LinePlot): leave the plot as it is until the first rows exist.
        loss, memory = _or_skip(loss_frame(rows)), _or_skip(memory_frame(rows, predicted))
        view["key"] = key
    else:
        loss = memory = gr.skip()
    run_dir = str(job.output_dir) if not status["running"] else gr.skip()
    log = "\n".join(list(job.log_tail)[-LOG_LINES:])
    return status_markdown(status), progress_html(status), loss, memory, log, view, run_dir


def _or_skip(frame):
    return frame if len(frame) else gr.skip()


def status_markdown(status: dict) -> str:
    return f"**{status['state']}**: {status['message']}"


def progress_html(status: dict | None) -> str:
    """A progress bar with step, percent, elapsed and ETA (plain HTML: no per-tick Python plotting)."""
    if not status or not status.get("max_steps"):
        return "<progress value='0' max='1' style='width:100%'></progress>"
    step, total = status["step"], status["max_steps"]
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)", f"elapsed {duration(status['elapsed_s'])}"]
    if status.get("eta_s") is not None:
        parts.append(f"ETA {duration(status['eta_s'])}")
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.4f}")
    return (f"<progress value='{step}' max='{total}' style='width:100%'></progress>"
            f"<div>{' · '.join(parts)}</div>")


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


# ---- widgets ------------------------------------------------------------------------
def build(state) -> None:
    gr.Markdown("Starts the settings of the LoRA tab in the background of this app. Stop saves the adapter "
                "and a checkpoint at the end of the current step. The run keeps going if you close the page.")
    with gr.Row():
        start_button = gr.Button("Start", variant="primary")
        stop_button = gr.Button("Stop", variant="stop")
    action = gr.Markdown()
    status = gr.Markdown()
    progress = gr.HTML(progress_html(None))
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", x_title="step",
                                y_title="loss", height=320)
        memory_plot = gr.LinePlot(x="seconds", y="GiB", color="series", title="Memory per device",
                                  x_title="seconds since the first step", y_title="GiB", height=320)
    log = gr.Textbox(label="Log (newest last)", lines=10, max_lines=10, interactive=False, autoscroll=True)
    run_dir = gr.Textbox(label="Last finished run folder (open it in the Inference tab)", interactive=False)
    view = gr.State({})
    plan = state.components.get("planner_plan")
    inputs = [view, state.config] + ([plan] if plan is not None else [])
    timer = gr.Timer(TICK_SECONDS)
    timer.tick(tick, inputs=inputs, outputs=[status, progress, loss_plot, memory_plot, log, view, run_dir],
               show_progress="hidden", queue=False)
    start_button.click(start, inputs=state.config, outputs=action)
    stop_button.click(stop, outputs=action)
    state.components["training_run"] = run_dir
