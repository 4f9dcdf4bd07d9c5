"""The Inference tab: did it help? Base and adapter side by side, and a held-out check.

Handlers are module-level functions of plain values; the decisions (which adapter a run
holds, whether it fits the base, matching answers) live in ``workbench.runs`` and
``workbench.inference``. The loaded model is the session's, kept per (base, adapter): asking
again reuses it, choosing another pair or starting a training run replaces it (one model in
memory at a time, never while a job trains).
"""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import gradio as gr
import pandas as pd

from workbench.errors import UserError

DEFAULT_PROMPT = "What color is the shape?"
HELDOUT_COLUMNS = ["image", "prompt", "expected", "base", "adapter", "base match", "adapter match"]


def tolerant_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose upload reaches the handler even when Pillow cannot open it.

    Gradio's own preprocess opens the upload with PIL and, for a text file named fake.jpg,
    fails before any handler runs (a bare "Error"); here the path goes on to ``prompt_sample``,
    which answers with a sentence. (An instance override, not a subclass: Gradio writes a .pyi
    file beside the module of every Component subclass.)"""
    from PIL import UnidentifiedImageError

    image = gr.Image(**kwargs)
    strict = image.preprocess

    def preprocess(payload):
        try:
            return strict(payload)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return str(payload.path) if payload is not None and payload.path else None

    image.preprocess = preprocess
    return image


@contextmanager
def comparer(session, base: str, adapter: str):
    """The session's base+adapter model for this pair (loaded once, reused while the pair stays)."""
    from workbench.inference import adapter_base
    from workbench.runs import usable_adapter

    adapter_dir = usable_adapter(adapter)
    trained_on, run_config = adapter_base(adapter_dir)
    base = (base or "").strip() or trained_on
    if not base:
        raise UserError("The adapter does not say which base model it was trained on: type the base model.")
    with session.inference(base, adapter_dir, run_config) as loaded:
        yield loaded


# ---------------------------------------------------------------------------- handlers
def runs_menu(session, selected: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """(choices, value) for the runs dropdown: every run the session knows (the Training tab's list, a run
    in its own output_dir included, each with its best checkpoint); keeps the selection, else the newest
    usable run."""
    from workbench.runs import run_choices

    runs = session.runs()
    choices = run_choices(runs)
    if selected not in [path for _, path in choices]:
        ready = [r.path for r in runs if r.adapter_dir and r.state != "training"]
        selected = ready[0] if ready else None
    return choices, selected


def refresh_runs(session, selected: str | None, base: str) -> tuple:
    """Re-read the runs (one that finished meanwhile appears). -> (dropdown, adapter, base, status).

    A kept selection leaves the adapter folder alone (it may hold a pasted path); a new
    selection fills it directly rather than through the dropdown's change event.
    """
    choices, value = runs_menu(session, selected)
    if value == selected:
        return gr.update(choices=choices), gr.update(), gr.update(), gr.update()
    return (gr.update(choices=choices, value=value), *choose_run(value, base))


def choose_run(run_dir: str | None, base: str) -> tuple[str, str, str]:
    """A run picked in the list fills the adapter folder and its base model. -> (adapter, base, status)."""
    from workbench.runs import run_info

    if not run_dir:
        return "", base, ""
    try:
        info = run_info(run_dir)
    except UserError as exc:
        return "", base, warning(str(exc))
    note = "" if info.adapter_dir or info.state == "training" else warning(f"Run {info.name} holds no adapter yet.")
    if info.state == "training":
        note = warning(f"Run {info.name} is still training: its adapter appears when it finishes.")
    return info.adapter_dir or "", info.base or base, note


def warning(text: str) -> str:
    return f"⚠️ {text}"


def speed(answer: dict) -> str:
    return f"{answer['new_tokens']} tokens in {answer['seconds']:.2f} s · **{answer['tokens_per_s']:.1f} tokens/s**"


def ask(session, base, adapter, image, image_path, prompt, system, max_new_tokens, temperature, top_p,
        video=None, video_path=None):
    """One question to both, about an image or a video. -> (base answer, base speed, adapter answer, adapter
    speed, status)."""
    from workbench.inference import Decoding, prompt_sample

    try:
        if not adapter or not str(adapter).strip():
            raise UserError("No adapter chosen: pick a run from the list or paste an adapter folder.")
        decoding = Decoding(int(max_new_tokens), float(temperature), float(top_p))
        decoding.generate_kwargs()
        # A typed path wins over the image box: the box starts with the demo's image, and a path
        # typed beside it was silently ignored (an upload clears the path box, see build).
        typed = str(image_path or "").strip()
        typed_video = str(video_path or "").strip()
        sample = prompt_sample(prompt, typed or image or None, (system or "").strip() or None,
                               typed_video or video or None)
        with comparer(session, base, str(adapter).strip()) as loaded:
            result = loaded.compare(sample, decoding)
    except UserError as exc:
        return "", "", "", "", warning(str(exc))
    same = " (the same answer)" if result["base"]["text"] == result["adapter"]["text"] else ""
    return (result["base"]["text"], speed(result["base"]), result["adapter"]["text"], speed(result["adapter"]),
            f"Greedy decoding{same}." if decoding.temperature <= 0 else f"Sampled at temperature {decoding.temperature}{same}.")


def typed_path_clears_image(text: str):
    """A typed path is the image asked about: the box must stop showing the demo's picture beside it."""
    return None if str(text or "").strip() else gr.skip()


def video_clears_image(video) -> tuple:
    """A video chosen (uploaded or typed) is what is asked about: the image box and path empty, so that
    the demo's picture does not stay beside it (an image and a video together are refused)."""
    return (None, "") if str(video or "").strip() else (gr.skip(), gr.skip())


def image_clears_video(image) -> tuple:
    """An image uploaded or typed is what is asked about: the video box and path empty."""
    return (None, "") if str(image or "").strip() else (gr.skip(), gr.skip())


def thumbnail(path: str | None, side: int = 64, wide: bool = False) -> str:
    """A small inline image (markdown data URI), so thumbnails show whatever folder the rows come from.
    ``wide``: a video's strip of sampled frames, up to four sides wide."""
    from PIL import Image

    if not path:
        return ""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((side * 4 if wide else side, side))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except OSError:
        return "(unreadable)"
    return f"![thumbnail](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def heldout_frame(result: dict) -> pd.DataFrame:
    mark = {True: "✓", False: "✗"}
    rows = [{"image": thumbnail(r.get("thumbnail"), wide=bool(r.get("video"))), "prompt": r["prompt"], "expected": r["expected"],
             "base": r["base"], "adapter": r["adapter"],
             "base match": mark[r["base_match"]] + (" (norm. ✓)" if r["base_match_normalised"] and not r["base_match"] else ""),
             "adapter match": mark[r["adapter_match"]] + (" (norm. ✓)" if r["adapter_match_normalised"] and not r["adapter_match"] else "")}
            for r in result["rows"]]
    return pd.DataFrame(rows, columns=HELDOUT_COLUMNS)


def accuracy_text(result: dict) -> str:
    import html

    n = len(result["rows"])
    text = (f"**{n} held-out rows.** Exact match: base **{result['base_accuracy']:.0%}**, "
            f"adapter **{result['adapter_accuracy']:.0%}**. Normalised (case and punctuation ignored): "
            f"base {result['base_accuracy_normalised']:.0%}, adapter {result['adapter_accuracy_normalised']:.0%}.")
    if result.get("metric"):  # the score evaluation during training plots, on these rows
        text += (f" Task metric ({result['metric']}, as in training's eval): base **{result['base_score']:.2f}**, "
                 f"adapter **{result['adapter_score']:.2f}**.")
    skipped = result.get("problems") or []
    if skipped:
        first = skipped[0]
        text += "\n\n" + warning(html.escape(f"{len(skipped)} row(s) skipped, not counted. Row {first['row']}: "
                                               f"{first['reason']}" + (" (and more)" if len(skipped) > 1 else "")))
    return text


def check(session, base, adapter, dataset, rows, max_new_tokens, temperature, top_p):
    """Score base and adapter on N rows of a dataset. -> (accuracy markdown, table)."""
    from workbench.inference import Decoding, heldout_check, heldout_rows

    empty = pd.DataFrame(columns=HELDOUT_COLUMNS)
    try:
        if not adapter or not str(adapter).strip():
            raise UserError("No adapter chosen: pick a run from the list or paste an adapter folder.")
        if rows is None or int(rows) != rows:
            raise UserError("Rows must be a whole number, e.g. 8.")
        decoding = Decoding(int(max_new_tokens), float(temperature), float(top_p))
        decoding.generate_kwargs()
        path = heldout_path(dataset)
        with comparer(session, base, str(adapter).strip()) as loaded:  # videos are checked with the run's settings
            samples, skipped = heldout_rows(path, int(rows), str(base or ""), config=loaded.config)
            result = heldout_check(loaded, samples, decoding, skipped)
    except UserError as exc:
        return warning(str(exc)), empty
    return accuracy_text(result), heldout_frame(result)


def heldout_path(dataset: str | None) -> str | None:
    """The held-out file as typed, or the dataset file inside a .zip (unpacked as the Dataset tab does)."""
    from pathlib import Path

    from workbench.data.archive import unpack_dataset

    from workbench.demo_video import demo_dataset_file

    chosen = demo_dataset_file((dataset or "").strip(), "heldout")  # demo-video: the video demo's held-out rows
    if chosen.lower().endswith(".zip") and Path(chosen).expanduser().is_file():
        return str(unpack_dataset(Path(chosen).expanduser()))
    return chosen or dataset


def default_inputs(model: str, dataset: str = "") -> tuple[str | None, str]:
    """(first held-out image, held-out file) of the demo when the app runs the demo; else nothing. With the
    video demo: no image, and its held-out rows by name."""
    from workbench.demo import ensure_demo, is_demo
    from workbench.demo_video import is_demo_dataset
    from workbench.inference import heldout_samples

    if not is_demo(model):
        return None, ""
    if is_demo_dataset(dataset):
        return None, dataset
    paths = ensure_demo(name=model)
    return heldout_samples(paths.heldout, 1)[0].images[0], str(paths.heldout)


# ---------------------------------------------------------------------------- layout
def build(ctx) -> None:
    """Widgets of the Inference tab, inside an open ``gr.Tab``; wires its events."""
    from gradio.context import Context

    options, session = ctx.options, ctx.session
    image_default, heldout_default = default_inputs(options.model, options.dataset or "")
    initial_choices, initial_run = runs_menu(session, None)
    initial_adapter, initial_base, _ = choose_run(initial_run, options.model)
    gr.Markdown("Did the adapter help? The base model answers with the adapter switched off, then on: "
                "same weights in memory, same input, same decoding.")
    with gr.Row(equal_height=False):
        run = gr.Dropdown(label="Run (newest first, with state and final loss)", choices=initial_choices,
                          value=initial_run, scale=3, interactive=True, elem_id="inference-run")
        base = gr.Textbox(label="Base model (empty: the one it was trained on)", value=initial_base, scale=1)
        refresh = gr.Button("↻ Refresh runs", scale=0, min_width=140, size="sm")
    adapter = gr.Textbox(label="Adapter folder (filled by the run list, or paste any folder with adapter_config.json)",
                         value=initial_adapter, placeholder="/path/to/run or /path/to/run/checkpoint-100", max_lines=1,
                         elem_id="adapter-folder")
    with gr.Accordion("Decoding (the same for base and adapter; greedy by default)", open=False):
        with gr.Row():
            max_new = gr.Slider(1, 512, value=32, step=1, label="Max new tokens")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature", info="0: greedy")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p", info="Used when temperature > 0")

    gr.Markdown("### One question")
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            image = tolerant_image(label="Image", type="filepath", value=image_default, height=170, sources=["upload"],
                                   elem_id="inference-image")
            image_path = gr.Textbox(label="…or image path", placeholder="/data/images/0001.png", max_lines=1,
                                    elem_id="inference-image-path")
            with gr.Accordion("…or a video (instead of the image)", open=False):
                video = gr.Video(label="Video", sources=["upload"], height=170, elem_id="inference-video")
                video_path = gr.Textbox(label="…or video path", placeholder="/data/clips/0001.mp4", max_lines=1,
                                        elem_id="inference-video-path")
        with gr.Column(scale=3):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=1, scale=3)
                system = gr.Textbox(label="System prompt (optional)", lines=1, scale=2,
                                    placeholder="You are a helpful assistant.")
            ask_button = gr.Button("Ask base and adapter", variant="primary")
            with gr.Row(equal_height=True):
                with gr.Column():
                    base_answer = gr.Textbox(label="Base model", lines=2, interactive=False, elem_id="base-answer")
                    base_speed = gr.Markdown(elem_id="base-speed")
                with gr.Column():
                    adapter_answer = gr.Textbox(label="With adapter", lines=2, interactive=False,
                                                elem_id="adapter-answer")
                    adapter_speed = gr.Markdown(elem_id="adapter-speed")
            status = gr.Markdown()

    gr.Markdown("### Held-out check")
    with gr.Row(equal_height=True):
        dataset = gr.Textbox(label="Dataset file", value=heldout_default, scale=4,
                             placeholder="held-out .jsonl, .json or .zip (empty: the demo's held-out rows)")
        # no Gradio minimum/maximum: 0 got a bare "Error" badge over the results; ``check`` answers with a sentence
        rows = gr.Number(label="Rows", elem_id="heldout-rows", value=8, precision=0, scale=1)
        check_button = gr.Button("Run held-out check", variant="primary", scale=1)
    accuracy = gr.Markdown(elem_id="heldout-accuracy")
    table = gr.Dataframe(headers=HELDOUT_COLUMNS, datatype=["markdown", "str", "str", "str", "str", "str", "str"],
                         interactive=False, wrap=True, max_height=420, elem_id="heldout-table",
                         column_widths=["140px", "22%", "10%", "20%", "14%", "10%", "10%"])

    decoding = [max_new, temperature, top_p]
    refresh.click(partial(refresh_runs, session), [run, base], [run, adapter, base, status], api_name="inference_runs")
    tab = Context.block
    if tab is not None and hasattr(tab, "select"):
        tab.select(partial(refresh_runs, session), [run, base], [run, adapter, base, status], api_visibility="private")  # a run finished meanwhile shows up on return
    run.change(choose_run, [run, base], [adapter, base, status])
    image.upload(lambda: "", None, image_path, show_progress="hidden")  # a new upload is the image asked about
    image_path.input(typed_path_clears_image, image_path, image, show_progress="hidden")
    video.upload(lambda: "", None, video_path, show_progress="hidden")
    video_path.input(typed_path_clears_image, video_path, video, show_progress="hidden")
    # one medium at a time: choosing a video empties the image (the demo's picture starts there), and back
    video.upload(video_clears_image, video, [image, image_path], show_progress="hidden")
    video_path.input(video_clears_image, video_path, [image, image_path], show_progress="hidden")
    image.upload(image_clears_video, image, [video, video_path], show_progress="hidden")
    image_path.input(image_clears_video, image_path, [video, video_path], show_progress="hidden")
    ask_button.click(partial(ask, session), [base, adapter, image, image_path, prompt, system, *decoding, video,
                                             video_path],
                     [base_answer, base_speed, adapter_answer, adapter_speed, status], api_name="inference_ask")
    check_button.click(partial(check, session), [base, adapter, dataset, rows, *decoding], [accuracy, table], api_name="inference_check")
    return InferenceTab(run=run, base=base, adapter=adapter, status=status)


@dataclass
class InferenceTab:
    run: object
    base: object
    adapter: object
    status: object
