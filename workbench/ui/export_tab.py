"""The Export tab: ship a run as an adapter for serving or as one merged model folder.

Handlers are module-level functions of plain values; every decision (which adapter, which
base, the refusals, the size, the disk) is ``workbench.export.plan_export``'s. One export
runs at a time in this process: a merge reads and writes a model's worth of disk.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from workbench.errors import UserError

MODES = [("Adapter only: for PEFT and serving engines that take LoRA adapters", "adapter"),
         ("Merged model: the base with the adapter folded in, one folder", "merged")]


def warning(text: str) -> str:
    return f"⚠️ {text}"


def runs_menu(session, selected: str | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """(choices, value): every run the session knows, newest first (a run in its own output_dir included, each
    with its best checkpoint); keeps the selection, else the newest finished run."""
    from workbench.runs import run_choices

    runs = session.runs()
    choices = run_choices(runs)
    if selected not in [path for _, path in choices]:
        finished = [r.path for r in runs if r.state == "finished"]
        selected = finished[0] if finished else None
    return choices, selected


def default_out(adapter: str | None, mode: str) -> str:
    """A new folder under the workbench's exports folder, named after the run (never an existing one)."""
    from workbench.paths import home

    if not adapter:
        return ""
    folder = Path(adapter)
    name = f"{folder.parent.name}-{folder.name}" if folder.name.startswith("checkpoint-") else folder.name
    base = home() / "exports" / f"{name}-{mode}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return str(path)


def choose_run(run_dir: str | None, mode: str) -> tuple[str, str, str]:
    """A run picked in the list -> (adapter folder, output folder, status)."""
    from workbench.runs import run_info

    if not run_dir:
        return "", "", ""
    try:
        info = run_info(run_dir)
    except UserError as exc:
        return "", "", warning(str(exc))
    note = ""
    if info.state != "finished":
        note = warning(f"Run {info.name} is {info.state}: only a finished run (or one of its complete checkpoints) "
                       "can be exported.")
    return info.path, default_out(info.path, mode), note


def refresh(session, selected: str | None, mode: str) -> tuple:
    choices, value = runs_menu(session, selected)
    if value == selected:
        return gr.update(choices=choices), gr.update(), gr.update(), gr.update()
    return (gr.update(choices=choices, value=value), *choose_run(value, mode))


def _plan(adapter, mode, dtype, base, out):
    from workbench.export import plan_export

    if not adapter or not str(adapter).strip():
        raise UserError("No run chosen: pick a finished run from the list or paste a run or checkpoint folder.")
    merged = mode == "merged"
    return plan_export(str(adapter).strip(), str(out or "").strip(), merge=merged,
                       dtype=(dtype or "auto") if merged else "auto", base=(base or "").strip() or None)


def check(adapter, mode, dtype, base, out) -> str:
    """What the export would write, and whether it fits on the disk. Writes nothing."""
    try:
        plan = _plan(adapter, mode, dtype, base, out)
    except UserError as exc:
        return warning(str(exc))
    return "\n\n".join(plan.summary().splitlines())


def export_now(session, adapter, mode, dtype, base, out, progress=gr.Progress()) -> str:
    """Write the export with a progress bar; -> the folder written, or the reason why not."""
    from workbench.export import run_export

    try:
        with session.exporting():
            plan = _plan(adapter, mode, dtype, base, out)
            progress(0, desc="Starting")
            folder = run_export(plan, lambda fraction, message: progress(fraction, desc=message))
    except UserError as exc:
        earlier = earlier_export(adapter, mode, base, out)
        if earlier is not None:  # Export pressed again (twice, or after it finished): say it is there
            folder, source_base = earlier
            return (f"**Already exported** to `{folder}`: that folder already holds files, this run's {mode} export; "
                    f"nothing was overwritten. Choose a new output folder to export again.\n\n"
                    f"Load it with `{load_line(mode == 'merged', folder, source_base)}`.")
        return warning(str(exc))
    return f"**Exported** to `{folder}`.\n\nLoad it with `{load_line(plan.merge, folder, plan.source.base)}`."


def load_line(merged: bool, folder, base: str) -> str:
    if merged:
        return f'AutoModelForImageTextToText.from_pretrained("{folder}")'
    return f'PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained("{base}"), "{folder}")'


def earlier_export(adapter, mode, base, out) -> tuple[Path, str] | None:
    """(folder, base) when ``out`` already holds this adapter's export of this kind, else None.

    Seen in the browser: Export pressed twice exported once, then the second press replaced the
    "Exported" line with "already holds files", so the export looked refused."""
    from workbench.export import read_manifest
    from workbench.export.source import read_source

    if not str(out or "").strip() or not str(adapter or "").strip():
        return None
    folder = Path(str(out).strip()).expanduser().absolute()
    manifest = read_manifest(folder)
    if manifest is None or manifest["kind"] != mode:
        return None
    try:
        source = read_source(str(adapter).strip(), (base or "").strip() or None)
    except UserError:
        return None
    return (folder, manifest["base"]) if manifest["adapter"] == str(source.adapter_dir) else None


def mode_changed(mode: str, adapter: str):
    """Merged exports choose a dtype; the default folder name follows the mode."""
    return gr.update(interactive=mode == "merged", value="auto"), default_out(adapter, mode)


# ---------------------------------------------------------------------------- layout
def build(ctx) -> None:
    """Widgets of the Export tab, inside an open ``gr.Tab``; wires its events."""
    from gradio.context import Context

    choices, initial = runs_menu(ctx.session, None)
    adapter_value, out_value, _ = choose_run(initial, "adapter")
    gr.Markdown("Ship it: the adapter as a clean folder for PEFT or a serving engine, or the base with the "
                "adapter folded in. A merge streams the base shard by shard (memory: about one shard), and the "
                "folder appears only when it is complete.")
    with gr.Row(equal_height=False):
        run = gr.Dropdown(label="Run (newest first)", choices=choices, value=initial, scale=3, interactive=True,
                          elem_id="export-run")
        refresh_button = gr.Button("↻ Refresh runs", scale=0, min_width=140, size="sm")
    adapter = gr.Textbox(label="Run or checkpoint folder (filled by the list, or paste one)", value=adapter_value,
                         max_lines=1, elem_id="export-adapter")
    with gr.Row():
        mode = gr.Radio(MODES, value="adapter", label="What to export", scale=3, elem_id="export-mode")
        dtype = gr.Dropdown(["auto", "bf16", "fp16", "fp32"], value="auto", label="Merged dtype (auto: as the base)",
                            interactive=False, scale=1, elem_id="export-dtype")
    with gr.Row():
        base = gr.Textbox(label="Base model (empty: the one the run trained on)", max_lines=1, scale=2)
        out = gr.Textbox(label="Output folder (new or empty)", value=out_value, max_lines=1, scale=3,
                         elem_id="export-out")
    with gr.Row():
        check_button = gr.Button("Check size and disk", scale=1)
        export_button = gr.Button("Export", variant="primary", scale=1, elem_id="export-button")
    status = gr.Markdown(elem_id="export-status")

    inputs = [adapter, mode, dtype, base, out]
    run.change(choose_run, [run, mode], [adapter, out, status])
    mode.change(mode_changed, [mode, adapter], [dtype, out])
    refresh_button.click(partial(refresh, ctx.session), [run, mode], [run, adapter, out, status], api_name="export_runs")
    check_button.click(check, inputs, status, api_name="export_check")
    export_button.click(partial(export_now, ctx.session), inputs, status, api_name="export_run", concurrency_limit=1)
    tab = Context.block
    if tab is not None and hasattr(tab, "select"):
        tab.select(partial(refresh, ctx.session), [run, mode], [run, adapter, out, status], api_visibility="private")
