"""Training tab: Start/Stop/Resume, state, progress with ETA, live loss and per-device memory, log.

With training.strategy ddp or fsdp, Start runs several processes through accelerate launch
(the session's ``LaunchedJob``); the tab shows them like any run, memory per rank. A run
launched by hand (a cluster's node scripts) is watched by pointing the tab at its folder.

The run lives in the session (``workbench.session.Workbench``), not in a browser session, so
a reloaded page or a second browser tab shows the same run; a run started by the CLI in
another process shows here too (read from its run folder) and blocks Start. A 1 s timer
polls the session; the plots are resent only when new metric rows arrived, and each series
is decimated (``workbench.training.series``), so a tick stays cheap on long runs.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import partial

import gradio as gr
import pandas as pd

from workbench.errors import UserError
from workbench.training.checks import config_from_raw
from workbench.training.series import checkpoint_frame, loss_frame, memory_frame, predicted_peaks, score_frame

TICK_SECONDS = 1.0
LOG_LINES = 40


# ---- handlers (plain functions: values in, values out) ----------------------------
def start(session, config: dict) -> str:
    """The Start button: the session checks the settings and the devices, then starts the job."""
    try:
        job = session.start_training(config_from_raw(config))
    except UserError as exc:
        return f"**Not started:** {_plain(exc)}"
    processes = getattr(job, "nproc", 1)
    how = f" {processes} processes ({job.config.training.strategy.upper()}, accelerate launch)" if processes > 1 else ""
    skipping = (" Problem rows are skipped: the status below says how many, before the model loads."
                if job.config.data.skip_problem_rows else "")
    return (f"Started{how}: run folder `{job.output_dir}`.{_plain(batch_note(job.config))} "
            f"{parts_note(job.config)}{skipping}")


def parts_note(cfg) -> str:
    """Which parts train, how, at which rate: said at Start because a short run ends (and clears
    this line) before a person finds the log's count of trainable parameters."""
    from workbench.training.parts import LABELS, rates

    part_rates = rates(cfg.lora, cfg.training.learning_rate)
    said = [f"{LABELS[part]} {'LoRA' if mode == 'lora' else mode} at {part_rates[part]:g}"
            for part, mode in cfg.lora.parts().items() if mode != "frozen"]
    return f"Trains: {'; '.join(said) or 'nothing'}."


SKIP_LABEL = "Train on the valid rows only (skip {} problem rows)"


def set_skip(config: dict, skip: bool) -> dict:
    """The checkbox into the shared config (data.skip_problem_rows); other keys (a plan) stay."""
    cfg = config_from_raw(config).replace(data={"skip_problem_rows": bool(skip)})
    return {**(config or {}), **cfg.to_dict()}


def skip_choice(config: dict, holder=None):
    """The checkbox as the config has it; its label counts the problem rows when the Dataset tab
    checked the file the run trains on (``holder``: that tab's checked report)."""
    data = (config or {}).get("data") or {}
    report = (holder or {}).get("report")
    known = report is not None and report.path == data.get("train_path")
    return gr.update(value=bool(data.get("skip_problem_rows")),
                     label=SKIP_LABEL.format(skipped_rows(report, data.get("max_length")) if known else "the"))


def skipped_rows(report, max_length) -> int:
    """The rows Start leaves out: the report's problem rows, and the valid rows longer than the run's
    max_length ("Use as training data" with p95 sets it below the longest rows)."""
    lengths = getattr(report, "lengths", {})
    longer = sum(1 for s in getattr(report, "samples", []) if max_length and s.row in lengths
                 and lengths[s.row].total > max_length)
    return len(report.problems) + longer


def batch_note(cfg) -> str:
    """The effective batch; under ddp/fsdp, how the plan's gradient accumulation is divided."""
    from workbench.training.launch_plan import split_batch, world_size

    return " " + split_batch(cfg.training, world_size(cfg)).sentence()


def stop(session) -> str:
    return _plain(session.stop_training())


def _plain(text) -> str:
    """A sentence shown in Markdown: '<image>' in a row's reason must show, not vanish as a tag."""
    return html.escape(str(text), quote=False)


def resumable_runs(session) -> list[tuple[str, str]]:
    """(label, folder) of the runs that stopped early and can continue, newest first."""
    return [(r.label(), r.path) for r in session.runs() if r.resumable]


def refresh_resumable(session, selected: str | None):
    choices = resumable_runs(session)
    paths = [path for _, path in choices]
    value = selected if selected in paths else (paths[0] if paths else None)
    return gr.update(choices=choices, value=value)


def resume(session, run_dir: str | None) -> str:
    if not run_dir:
        return "**Not resumed:** pick a run to continue (stopped, failed or interrupted runs with a checkpoint)."
    try:
        job = session.resume_training(run_dir)
    except UserError as exc:
        return f"**Not resumed:** {_plain(exc)}"
    return f"Resuming `{job.output_dir}` from its newest complete checkpoint."


def watch(session, run_dir: str) -> str:
    """Show a run folder here (e.g. a run launched by hand on a cluster's shared disk)."""
    try:
        return _plain(session.watch(run_dir))
    except UserError as exc:
        return f"**Not watched:** {_plain(exc)}"


def tick(session, view: dict | None, config: dict | None = None, plan: dict | None = None):
    """One timer tick -> (status, progress, loss plot, memory plot, log, view, finished run folder,
    the "continue a run" list, its accordion, the action line, the eval score plot, the checkpoints table).

    ``view`` remembers which run and how many metric rows this browser already shows; plots
    are sent again only when that changed (``gr.skip()`` otherwise). When the run shown stops
    early, the list of runs to continue is refreshed and opened: it can be resumed at once, and
    the action line (what Start or Resume answered about the run before) is cleared. Another run
    shown without rows yet clears the plots: the last run's curves must not stand for it.
    """
    view = dict(view or {})
    snap = session.snapshot()
    if snap is None:
        return ("No training run yet. Check the settings in the LoRA tab, then press Start.",
                progress_html(None), gr.skip(), gr.skip(), "", view, gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                gr.skip(), gr.skip())
    status, rows = snap["status"], snap["rows"]
    predicted = predicted_peaks((config or {}).get("plan")) or predicted_peaks(plan)
    key = [status["output_dir"], len(rows), sorted(predicted.items())]
    if view.get("key") != key:
        # An empty frame would fix the plot's axes as categorical for good (Gradio 6.31
        # LinePlot): leave the plot as it is until the first rows exist, or empty it (None)
        # when it shows another run's curves.
        other_run = bool(view.get("key")) and view["key"][0] != status["output_dir"]
        empty = None if other_run else gr.skip()
        loss, memory = _or(loss_frame(rows), empty), _headroom(_or(memory_frame(rows, predicted), empty))
        score = _or(score_frame(rows), empty)
        view["key"] = key
    else:
        loss = memory = score = gr.skip()
    checkpoints = checkpoints_table(snap.get("folder"), rows, view)
    run_dir = status["output_dir"] if not status["running"] else gr.skip()
    runs = box = action = gr.skip()
    ended = view.get("running") and not status["running"]  # it ended while this page watched it
    moved = view.get("state") not in (None, [status["output_dir"], status["state"]])
    if ended or moved:  # a resumed run that trains or finished is no longer "stopped 221/300" in the list
        runs = refresh_resumable(session, status["output_dir"] if ended else None)
    if ended:
        action = ""
        box = gr.update(open=any(path == status["output_dir"] for _, path in resumable_runs(session)))
    view["running"], view["state"] = status["running"], [status["output_dir"], status["state"]]
    log = "\n".join(snap["log"][-LOG_LINES:])
    text = status_markdown(status)
    if snap["external"] and status["running"]:
        text += ("  \n*Started outside this app (CLI or launch): watched from its run folder; Stop asks it to stop "
                 "at the end of its current step.*")
    return text, progress_html(status), loss, memory, log, view, run_dir, runs, box, action, score, checkpoints


def checkpoints_table(folder, rows: list[dict], view: dict):
    """The run's complete checkpoints with their eval score, the best marked; resent only when they changed."""
    if folder is None:
        return gr.skip()
    complete, best = folder.complete_checkpoints(), folder.status().get("best_checkpoint")
    key = [str(folder.path), [n for n, _ in complete], best, len(rows)]
    if view.get("checkpoints") == key:
        return gr.skip()
    view["checkpoints"] = key
    return checkpoint_frame(complete, rows, best)


def _or(frame, empty):
    return frame if len(frame) else empty


def _headroom(frame):
    """The memory plot with room above its highest line: a predicted peak drawn on the frame's top edge
    reads as the plot's border."""
    if not isinstance(frame, pd.DataFrame):
        return frame
    return gr.update(value=frame, y_lim=[0, round(float(frame["GiB"].max()) * 1.15 + 0.01, 2)])


def status_markdown(status: dict) -> str:
    processes = status.get("processes") or 1
    where = f" ({processes} processes, {status.get('strategy', '').upper()})" if processes > 1 else ""
    return f"**{status['state']}**{where}: {_plain(status['message'])}"


def progress_html(status: dict | None) -> str:
    """A progress bar with step, percent, elapsed and ETA (plain HTML: no per-tick Python plotting)."""
    if not status or not status.get("max_steps"):
        return "<progress value='0' max='1' style='width:100%'></progress>"
    step, total = status["step"], status["max_steps"]
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)"]
    if status.get("elapsed_s"):
        parts.append(f"elapsed {duration(status['elapsed_s'])}")
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
@dataclass
class TrainingTab:
    finished_run: object  # textbox holding the folder of the run that ended last
    skip: object  # the "train on the valid rows only" checkbox
    skip_set: object  # its event: the user changed data.skip_problem_rows in the shared config


def build(ctx, plan=None) -> TrainingTab:
    session = ctx.session
    gr.Markdown("Starts the settings of the LoRA tab in the background of this app (strategy ddp or fsdp: one "
                "process per GPU through accelerate launch). Stop saves the adapter and a checkpoint at the end "
                "of the current step, on every process. The run keeps going if you close the page.")
    with gr.Row():
        start_button = gr.Button("Start", variant="primary", elem_id="training-start")
        stop_button = gr.Button("Stop", variant="stop", elem_id="training-stop")
    skip = gr.Checkbox(value=bool(ctx.config.value["data"].get("skip_problem_rows")), label=SKIP_LABEL.format("the"),
                       info="Off (the default): a dataset with any problem row is refused at Start. On: those rows "
                            "are left out, their count said when the run starts and their list kept in the run "
                            "folder (skipped-rows.jsonl). The same setting as data.skip_problem_rows on the LoRA tab.",
                       elem_id="training-skip-problem-rows")
    resumable = resumable_runs(session)
    with gr.Accordion("Continue a run that stopped early", open=bool(resumable)) as continue_box:
        with gr.Row():
            runs = gr.Dropdown(label="Stopped, failed or interrupted runs (each continues from its newest complete "
                               "checkpoint)", choices=resumable, scale=4, elem_id="training-resumable")
            refresh = gr.Button("↻", scale=0, min_width=60)
            resume_button = gr.Button("Resume", scale=1, elem_id="training-resume")
    action = gr.Markdown(elem_id="training-action")
    status = gr.Markdown(elem_id="training-status")
    progress = gr.HTML(progress_html(None))
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", x_title="step",
                                y_title="loss", height=320)
        memory_plot = gr.LinePlot(x="step", y="GiB", color="series", title="Memory per device",
                                  x_title="step", y_title="GiB", y_lim=[0, None], height=320)
    with gr.Row():
        score_plot = gr.LinePlot(x="step", y="score", color="series", title="Eval score (held-out answers, higher "
                                 "is better)", x_title="step", y_title="score", y_lim=[0, 1], height=280)
        checkpoints = gr.Dataframe(label="Checkpoints (eval score at their step; the best is kept by the rotation "
                                   "and offered to the Inference and Export tabs)", interactive=False,
                                   elem_id="training-checkpoints")
    log = gr.Textbox(label="Log (newest last)", lines=10, max_lines=10, interactive=False, autoscroll=True)
    run_dir = gr.Textbox(label="Last finished run folder (open it in the Inference tab)", interactive=False)
    with gr.Accordion("Watch a run folder", open=False):
        with gr.Row():
            watched = gr.Textbox(label="Run folder (e.g. a run launched with the node scripts of `python -m "
                                       "workbench launch`, on a shared disk)", scale=4, elem_id="training-watch-path")
            watch_button = gr.Button("Watch", scale=1, elem_id="training-watch")
    view = gr.State({})
    inputs = [view, ctx.config] + ([plan] if plan is not None else [])
    timer = gr.Timer(TICK_SECONDS)
    timer.tick(partial(tick, session), inputs=inputs,
               outputs=[status, progress, loss_plot, memory_plot, log, view, run_dir, runs, continue_box, action,
                        score_plot, checkpoints],
               show_progress="hidden", queue=False)
    skip_set = skip.input(set_skip, inputs=[ctx.config, skip], outputs=ctx.config, show_progress="hidden")
    start_button.click(partial(start, session), inputs=ctx.config, outputs=action)
    stop_button.click(partial(stop, session), outputs=action)
    refresh.click(partial(refresh_resumable, session), inputs=runs, outputs=runs)
    resume_button.click(partial(resume, session), inputs=runs, outputs=action)
    watch_button.click(partial(watch, session), inputs=watched, outputs=action)
    from gradio.context import Context

    tab = Context.block
    if tab is not None and hasattr(tab, "select"):
        tab.select(partial(refresh_resumable, session), inputs=runs, outputs=runs)
        tab.select(lambda config: gr.update(value=bool(config["data"].get("skip_problem_rows"))),
                   inputs=ctx.config, outputs=skip)  # the LoRA form may have changed it
    return TrainingTab(finished_run=run_dir, skip=skip, skip_set=skip_set)
