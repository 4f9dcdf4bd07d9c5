"""Dataset tab: is my data right? Summary, problem rows, paged rows with thumbnails, one row as
the model sees it (trained tokens highlighted), length histogram, and "Use as training data".

Handlers are plain functions over ``workbench.data`` (check_dataset, rows_table,
preview_page, render_row); they format its answers and decide nothing themselves.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

from workbench.errors import UserError
from workbench.settings import DATA_FORMATS

FORMATS = list(DATA_FORMATS)
TABLE_HEADERS = ["row", "status", "images", "user", "assistant", "tokens"]


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from workbench.data.stats import load_tokenizer

    return load_tokenizer(model)


@functools.lru_cache(maxsize=4)
def _context(model: str):
    from workbench.data.stats import model_context

    return model_context(model)


@functools.lru_cache(maxsize=4)
def _processor(model: str):
    from workbench.models import locate_model
    from workbench.models.processors import load_processor

    source = locate_model(model)
    if source.local_path is None:
        raise UserError(f"{source.label} is not downloaded yet: the row view needs its processor (train or "
                        "infer with it once, or give a local model folder).")
    return load_processor(str(source.local_path), local_only=True)


def default_path(options) -> str:
    """The launch --dataset, or the demo's training rows when the model is the demo."""
    from workbench.demo import ensure_demo, is_demo

    from workbench.demo_video import demo_dataset_file

    if options.dataset:
        return demo_dataset_file(options.dataset)
    return str(ensure_demo(name=options.model).train) if is_demo(options.model) else ""


# The row panel after a check: the last file's row must not stand beside this file's table.
ROW_PANEL_CLEARED = ([], [], "Click a row of the table (or type its number) to see it as the model sees it.")


def _empty_outputs(message: str):
    import pandas as pd

    return (None, message, pd.DataFrame(columns=["row", "kind", "reason"]), "",
            histogram_update(None), 1, "", pd.DataFrame(columns=TABLE_HEADERS), [], *ROW_PANEL_CLEARED)


def histogram_update(bars):
    """The histogram shown with these bars, or hidden when there are none: an empty frame would
    break the plot (see test_app), and the last file's bars must not stand for this one."""
    if bars is None or not len(bars):
        return gr.update(visible=False)
    return gr.update(value=bars, visible=True)


def _escape(text: str) -> str:
    """User text (paths, reasons quoting <image>) shown in Markdown: tags must show, not vanish."""
    return html.escape(str(text), quote=False)


UPLOADED_ALONE = (" An uploaded file arrives without its images: give the image folder, or upload a .zip "
                  "holding the file and its images.")


def dataset_path(path: str, upload) -> tuple[str, str]:
    """(dataset file, note) from the path box or an upload; a .zip is unpacked under the workbench home."""
    from pathlib import Path

    from workbench.data.archive import unpack_dataset

    from workbench.demo_video import demo_dataset_file

    chosen = demo_dataset_file((upload or path or "").strip())  # demo-video: the video demo's rows
    if chosen.lower().endswith(".zip") and Path(chosen).is_file():
        unpacked = unpack_dataset(chosen, Path(chosen).name)
        return str(unpacked), f" Unpacked from {Path(chosen).name} into {unpacked.parent}."
    return chosen, ""


def check(path: str, upload, fmt: str, config: dict, image_folder: str = ""):
    """Check the file; returns (holder, summary, problems, stats, histogram, page, page label, table, gallery,
    row images, row segments, row counts)."""
    import pandas as pd

    from workbench.data.downloads import Downloads
    from workbench.data.images import ImageHeaders
    from workbench.data.preview import preview_page, rows_table
    from workbench.data.stats import histogram
    from workbench.data.validation import check_dataset
    from workbench.data.videos import defaults_from

    if not (upload or path or "").strip():
        return _empty_outputs("Give a dataset path or upload a .jsonl / .json file (or a .zip with its images).")
    d, model = config["data"], config["model"]["name_or_path"]
    try:
        path, note = dataset_path(path, upload)
        report = check_dataset(path, fmt or "auto", d["max_length"], d["min_pixels"], d["max_pixels"],
                               tokenizer=_tokenizer(model), image_folder=(image_folder or "").strip() or None,
                               context=_context(model), model=model, video=defaults_from(d),
                               headers=ImageHeaders(downloads=Downloads(allow_private=d.get("allow_private_urls", False))))
    except UserError as exc:
        # The summary, right under the Check button, says it; a toast would cover that button.
        return _empty_outputs(f"**Cannot read this dataset.** {_escape(exc)}")
    table = rows_table(report)
    holder = {"report": report, "table": table}
    kinds = ", ".join(f"{k} {n}" for k, n in report.problems_by_kind().items()) or "none"
    summary = (f"**{_escape(report.path)}** ({report.format}): **{report.rows}** rows, **{report.valid}** valid, "
               f"**{len(report.problems)}** with problems ({kinds}).")
    if upload and not note and report.problems_by_kind().get("image-missing") and not image_folder:
        note = UPLOADED_ALONE
    summary += _escape(note)
    problems = pd.DataFrame([{"row": p.row, "kind": p.kind, "reason": p.reason} for p in report.problems],
                            columns=["row", "kind", "reason"])
    page = preview_page(report, table, 1)
    bars = histogram(report.totals())
    # a plain frame: Gradio 6.31 drops a value sent together with a list ``sort`` (the labels sort as text)
    return (holder, summary, problems, stats_markdown(report), histogram_update(bars), page.number,
            f"of {page.pages}", page.table, page.thumbnails, *ROW_PANEL_CLEARED)


def stats_markdown(report) -> str:
    s = report.stats
    if not s.get("rows"):
        return "No measurable rows."
    context = f" Rows longer than the model's context ({report.context} positions) are problems." if report.context else ""
    videos = (f" Videos: {s['videos']}, **{s['video_frames_min']}-{s['video_frames_max']}** frames each (video "
              "tokens included above)." if s.get("videos") else "")
    return (f"Tokens per row (text + visual, images at {s['min_pixels']}..{s['max_pixels']} pixels): "
            f"p50 **{s['p50']}**, p95 **{s['p95']}**, max **{s['max']}**, mean {s['mean']}; "
            f"visual share **{s['visual_share']:.0%}**; {s['unique_images']} unique images. "
            f"Trained (answer) tokens per row: p95 **{s['trained_p95']}**, max **{s['trained_max']}**. "
            f"Text tokens: {s['text_tokens']}.{videos}{context}")


def turn_page(holder, number):
    """(page, page label, table, gallery) for page ``number`` of the checked file."""
    from workbench.data.preview import preview_page

    if not holder:
        return 1, "", None, []
    page = preview_page(holder["report"], holder["table"], number or 1)
    return page.number, f"of {page.pages}", page.table, page.thumbnails


def show_row(holder, row, config: dict):
    """(images with where each came from, highlighted segments, counts markdown) for one row,
    rendered as training renders it; a problem row shows its reason and its text as written."""
    from workbench.data.collate import SampleEncoder
    from workbench.data.preview import image_sources, render_row, row_markdown_summary, video_sources
    from workbench.data.videos import defaults_from

    if not holder:
        return [], [], "Check a dataset, then pick a row."
    report = holder["report"]
    if row is None or int(row) < 1:
        return [], [], "Rows start at 1: type a row number, or click a row of the table."
    row = int(row)
    sample = report.parsed.get(row)
    reasons = [p.reason for p in report.problems if p.row == row]
    if sample is None:
        if not reasons:
            return [], [], f"There is no row {row} in this file."
        user, assistant = report.texts.get(row, ("", ""))
        segments = [(f"user: {user}\n", None), (f"assistant: {assistant}", None)] if user or assistant else []
        return [], segments, f"**Row {row}**: {_escape(reasons[0])}"
    sources = image_sources(sample)
    gallery = [(png, caption) for png, caption in sources if png]
    where = "\n".join(f"- {_escape(caption)}" for _, caption in sources)
    where = f"\n\nImages:\n{where}" if where else ""
    if reasons:
        segments = [(f"{t.role}: {t.text}\n", None) for t in sample.turns]
        return gallery, segments, f"**Row {row}**: {_escape(reasons[0])}{where}"
    d, model = config["data"], config["model"]["name_or_path"]
    try:
        encoder = SampleEncoder(_processor(model), d["max_length"], d["min_pixels"], d["max_pixels"],
                                defaults_from(d))
    except (OSError, ValueError, UserError) as exc:
        return gallery, [], _escape(f"The processor of '{model}' is not available locally ({exc}): counts only.") + where
    try:
        view = render_row(sample, encoder)
        strips = video_sources(sample, encoder)  # the frames training samples, with their times
    except (OSError, ValueError, UserError) as exc:
        return gallery, [], _escape(f"Row {sample.row} cannot be rendered: {exc}") + where
    gallery += [(png, caption) for png, caption in strips if png]
    if strips:
        where += "\n\nVideos:\n" + "\n".join(f"- {_escape(caption)}" for _, caption in strips)
    return gallery, visible_newlines(view.segments), row_markdown_summary(view) + where


TRAINED_NEWLINE = "↵"


def visible_newlines(segments: list) -> list:
    """The segments with each trained newline marked: the highlighted text shows a blank line as
    nothing, so an answer starting with "\\n\\n" would look as if its newlines were not trained."""
    return [(text.replace("\n", TRAINED_NEWLINE + "\n"), label) if label == "trained" else (text, label)
            for text, label in segments]


def select_row(holder, evt: gr.SelectData):
    """The row number of a clicked table cell."""
    if not holder or evt is None or evt.index is None:
        return None
    table_row = evt.row_value[0] if getattr(evt, "row_value", None) else None
    return int(table_row) if table_row is not None else None


def use_as_training(holder, which: str, config: dict):
    """data.train_path / format / image_folder / max_length (p95 or max) of the checked file into the shared config."""
    from workbench.settings import RunConfig

    if not holder:
        gr.Warning("Check a dataset first.")
        return config, "Check a dataset first."
    report = holder["report"]
    stats = report.stats
    if not stats.get("rows"):
        gr.Warning("No measurable rows: fix the problems first.")
        return config, "No measurable rows: fix the problems first."
    length = int(stats["max" if which == "max" else "p95"])
    trained = int(stats["trained_max" if which == "max" else "trained_p95"])
    updated = RunConfig.from_dict(config).replace(
        data={"train_path": report.path, "format": report.format, "max_length": length,
              "image_folder": report.image_folder or "", "trained_tokens": trained}).to_dict()
    images = f", images from {report.image_folder}" if report.image_folder else ""
    return updated, (f"Training data: {_escape(report.path)} ({report.format}{_escape(images)}), max_length {length} "
                     f"({which}), {trained} trained tokens per row for the memory planner. "
                     f"{'Rows above it are refused at Start.' if which == 'p95' else ''}")


def build(state) -> dict:
    """The tab's widgets and events; returns {"used": the "Use as training data" event, "report": the
    checked file's report holder}."""
    config = state.config
    holder = gr.State(None)
    with gr.Row():
        path = gr.Textbox(label="Dataset file", value=default_path(state.options), scale=4,
                          info="A .jsonl, .json, .zip, .parquet or .arrow file, or a datasets save_to_disk folder, "
                               "on this machine (relative image paths start at its folder).")
        upload = gr.File(label="or upload (.zip: the file with its images)", type="filepath", scale=2,
                         file_types=[".jsonl", ".json", ".zip", ".parquet", ".arrow"])
        image_folder = gr.Textbox(label="Image folder (optional)", scale=2,
                                  info="Where relative image paths start, when not beside the file.")
        fmt = gr.Dropdown(FORMATS, value="auto", label="Format", scale=1,
                          info="auto: detected from the first record.")
        check_button = gr.Button("Check", variant="primary", scale=1)
    summary = gr.Markdown()
    with gr.Accordion("Problems", open=True):
        problems = gr.Dataframe(headers=["row", "kind", "reason"], interactive=False, wrap=True, max_height=240,
                                column_widths=["8%", "16%", "76%"], elem_id="dataset-problems")
    with gr.Row():
        with gr.Column(scale=3):
            stats = gr.Markdown()
            plot = gr.BarPlot(x="tokens", y="rows", title="Total tokens per row", x_title="tokens per row",
                              y_title="rows", height=220, x_label_angle=-45, sort="x", y_lim=[0, None])
        with gr.Column(scale=1):
            which = gr.Radio(["p95", "max"], value="p95", label="max_length from")
            use = gr.Button("Use as training data")
            used = gr.Markdown()
    with gr.Row():
        # No Gradio minimum on Page and Row: it answers 0 with an "Error" badge over every output; the handlers clamp.
        page = gr.Number(label="Page", value=1, precision=0, scale=1)
        pages = gr.Markdown()
        prev_button, next_button = gr.Button("Previous", scale=1), gr.Button("Next", scale=1)
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, max_height=480)
    gallery = gr.Gallery(label="Images on this page", columns=10, height=140, allow_preview=False)
    with gr.Row():
        row = gr.Number(label="Row", value=1, precision=0, scale=1)
        show = gr.Button("Show row", scale=1)
    with gr.Row():
        # contain: the whole image, so a box at its edge is not cropped away
        row_images = gr.Gallery(label="Row images (caption: where each came from)", columns=2, height=240, scale=1,
                                object_fit="contain", elem_id="dataset-row-images")
        with gr.Column(scale=3):
            counts = gr.Markdown()
            rendered = gr.HighlightedText(label="As the model sees it (trained tokens highlighted, "
                                                f"{TRAINED_NEWLINE} a trained newline)",
                                          color_map={"trained": "green", "image": "blue"}, show_legend=True)

    outputs = [holder, summary, problems, stats, plot, page, pages, table, gallery, row_images, rendered, counts]
    inputs = [path, upload, fmt, config, image_folder]
    check_button.click(check, inputs, outputs)
    upload.upload(check, inputs, outputs)
    image_folder.submit(check, inputs, outputs)
    page_outputs = [page, pages, table, gallery]
    page.submit(turn_page, [holder, page], page_outputs)
    prev_button.click(lambda h, n: turn_page(h, (n or 1) - 1), [holder, page], page_outputs)
    next_button.click(lambda h, n: turn_page(h, (n or 1) + 1), [holder, page], page_outputs)
    table.select(select_row, [holder], row).then(show_row, [holder, row, config], [row_images, rendered, counts])
    show.click(show_row, [holder, row, config], [row_images, rendered, counts])
    row.submit(show_row, [holder, row, config], [row_images, rendered, counts])
    used_event = use.click(use_as_training, [holder, which, config], [config, used])
    from gradio.context import Context

    if path.value and Context.root_block is not None:
        Context.root_block.load(check, inputs, outputs)
    return {"used": used_event, "report": holder}
