"""What the Dataset tab shows: a paged table of rows, and one row as the model sees it.

The table is built once per check (a pandas DataFrame over every record, broken ones
included); a page turn is an ``iloc`` slice plus thumbnails made once per image under the
workbench home, so it costs the same on row 10 and row 99,990.

A row view renders the sample exactly as training does: ``SampleEncoder.tokens`` (the
model's chat template, the processor expanding each image into its visual tokens, and the
trained flag of every token). A video shows as a strip of the frames training samples, each
with its time in the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.data.downloads import Downloads
from workbench.data.images import PREVIEW_SIDE, read_image_info, source_label, thumbnail
from workbench.data.validation import DatasetReport
from workbench.paths import home

PAGE_SIZE = 20
TEXT_PREVIEW = 80
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
STRIP_HEIGHT = 96  # each sampled frame's height in a video's strip
STRIP_FRAMES = 16  # frames drawn at most (evenly chosen among those sampled)


def shown_folders() -> list:
    """The folders of the small copies the Dataset tab shows: the only files the app serves from disk.

    A dataset's own folder is never served (it may be the home folder, .ssh included); each
    image shown is a thumbnail made here, then copied by Gradio into its own cache."""
    return [home() / "thumbnails", home() / "previews"]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_PREVIEW else text[: TEXT_PREVIEW - 1] + "…"


def rows_table(report: DatasetReport):
    """One line per record: row, status, images, first user / assistant text, tokens."""
    import pandas as pd

    problems = {}
    for p in report.problems:
        problems.setdefault(p.row, p.kind)
    rows = sorted(set(report.parsed) | set(problems))
    user, assistant, images, videos, tokens = [], [], [], [], []
    for row in rows:
        sample = report.parsed.get(row)
        length = report.lengths.get(row)
        if sample:
            user.append(_short(sample.first_user_text))
            assistant.append(_short(next((t.text for t in sample.turns if t.role == "assistant"), "")))
        else:  # a row that did not parse: its text as far as it could be read
            loose = report.texts.get(row, ("", ""))
            user.append(_short(loose[0]))
            assistant.append(_short(loose[1]))
        images.append(len(sample.images) if sample else 0)
        videos.append(len(sample.videos) if sample else 0)
        tokens.append(length.total if length else None)
    return pd.DataFrame({
        "row": rows,
        "status": [problems.get(r, "ok") for r in rows],
        "images": images,
        "videos": videos,
        "user": user,
        "assistant": assistant,
        "tokens": pd.array(tokens, dtype="Int64"),
    })


def page_count(table, page_size: int = PAGE_SIZE) -> int:
    return max(1, -(-len(table) // page_size))


@dataclass
class Page:
    number: int  # 1-based
    pages: int
    table: object  # pandas DataFrame slice
    thumbnails: list[tuple[str, str]]  # (thumbnail path, caption "row N")


def preview_page(report: DatasetReport, table, number: int, page_size: int = PAGE_SIZE) -> Page:
    """Page ``number`` (1-based, clamped) of the table with one thumbnail per image of its rows."""
    pages = page_count(table, page_size)
    number = min(max(1, int(number)), pages)
    part = table.iloc[(number - 1) * page_size: number * page_size]
    folder = shown_folders()[0]
    downloads = Downloads()  # reads the cache only: the check downloaded what it could
    thumbs = []
    for row in part["row"]:
        sample = report.parsed.get(int(row))
        for i, image in enumerate(sample.images if sample else []):
            small = thumbnail(image, folder, downloads=downloads)
            if small:
                thumbs.append((small, f"row {row}" + (f" #{i + 1}" if len(sample.images) > 1 else "")))
    return Page(number, pages, part.reset_index(drop=True), thumbs)


def image_sources(sample, downloads=None) -> list[tuple[str | None, str]]:
    """(preview PNG or None, where it came from) per image of a row, for the row view's gallery; a
    grounding row's boxes are drawn on its images, each with its label."""
    folder = shown_folders()[1]
    downloads = downloads or Downloads()
    out = []
    for i, ref in enumerate(sample.images, start=1):
        preview = thumbnail(ref, folder, PREVIEW_SIDE, downloads)
        boxes = [box for box in sample.boxes if box.image == i - 1]
        caption = f"#{i}: {source_label(ref, downloads)}"
        if preview and boxes:
            info = read_image_info(ref, downloads=downloads)
            if not info.error:
                preview = draw_boxes(preview, boxes, (info.width, info.height))
                caption += f", {len(boxes)} box(es)"
        out.append((preview, caption))
    return out


def draw_boxes(preview: str, boxes: list, size: tuple[int, int]) -> str:
    """A copy of the preview PNG with ``boxes`` (``workbench.data.grounding.Box``) drawn on it, for an
    image of ``size`` (width, height) pixels; made once per set of boxes."""
    import hashlib
    import os

    from PIL import Image, ImageDraw

    key = hashlib.sha1(repr((preview, [(b.coords, b.unit, b.label) for b in boxes], size)).encode()).hexdigest()[:16]
    out = Path(preview).with_name(f"{Path(preview).stem}-boxes-{key}.png")
    if out.is_file():
        return str(out)
    with Image.open(preview) as image:
        image = image.convert("RGB")
        scale = image.width / size[0], image.height / size[1]
        draw = ImageDraw.Draw(image)
        for n, box in enumerate(boxes, start=1):
            x1, y1, x2, y2 = box.pixels(*size)
            rect = (x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1])
            colour = BOX_COLOURS[(n - 1) % len(BOX_COLOURS)]
            draw.rectangle(rect, outline=colour, width=2)
            label = f"{n} {box.label}".strip()
            left, top, right, bottom = draw.textbbox((rect[0] + 3, rect[1] + 2), label)
            draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
            draw.text((rect[0] + 3, rect[1] + 2), label, fill="white")
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, out)
    return str(out)


def video_sources(sample, encoder) -> list[tuple[str | None, str]]:
    """(strip PNG or None, caption) per video of a row: the frames training samples (``encoder``, a
    ``SampleEncoder``, holds the run's video settings), side by side, each with its time in seconds."""
    from workbench.data.videos import describe

    out = []
    for i, ref in enumerate(sample.videos, start=1):
        sampled = encoder.videos(_one_video(sample, i - 1))[0]  # BadVideo: one sentence
        h, w = sampled.frames.shape[2:]
        caption = (f"video #{i}: {describe(ref)}, {sampled.count} frames at {w}x{h} "
                   f"({', '.join(f'{t:.1f}s' for t in sampled.timestamps[:8])}{' ...' if sampled.count > 8 else ''})")
        out.append((frame_strip(sampled, shown_folders()[1]), caption))
    return out


def _one_video(sample, index: int):
    """The row with only its video ``index``: the encoder samples that one."""
    from dataclasses import replace

    return replace(sample, videos=[sample.videos[index]], video_options=[sample.video_option(index)])


def frame_strip(sampled, folder: Path) -> str:
    """A PNG of the sampled frames in a row, each labelled with its timestamp (made once per content)."""
    import hashlib
    import os

    import numpy as np
    from PIL import Image, ImageDraw

    frames = sampled.frames
    picks = np.linspace(0, sampled.count - 1, min(sampled.count, STRIP_FRAMES)).round().astype(int).tolist()
    times = sampled.timestamps
    key = hashlib.sha1(frames[picks].numpy().tobytes() + repr([times[i] for i in picks]).encode()).hexdigest()[:20]
    out = folder / f"strip-{key}.png"
    if out.is_file():
        return str(out)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[2:]
    width = max(1, round(w * STRIP_HEIGHT / h))
    label = 14
    strip = Image.new("RGB", (len(picks) * (width + 2), STRIP_HEIGHT + label), "#dddddd")
    draw = ImageDraw.Draw(strip)
    for n, i in enumerate(picks):
        pixels = frames[i].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels).resize((width, STRIP_HEIGHT))
        strip.paste(picture, (n * (width + 2), 0))
        draw.text((n * (width + 2) + 2, STRIP_HEIGHT + 1), f"{times[i]:.1f}s", fill="black")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    strip.save(tmp, format="PNG")
    os.replace(tmp, out)
    return str(out)


BOX_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass
class RowView:
    row: int
    images: list[str]
    segments: list[tuple[str, str | None]]  # (text, "trained" | "image" | "video" | None) for HighlightedText
    text_tokens: int  # everything but the visual tokens (chat template included)
    visual_tokens: list[int]  # per run of image or video tokens (Qwen3-VL: one run per pair of frames)
    trained_tokens: int
    total_tokens: int


def render_row(sample, encoder) -> RowView:
    """The row through the chat template and processor, with trained tokens marked.

    ``encoder`` is a ``workbench.data.collate.SampleEncoder`` for the model and pixel limits in use.
    """
    enc, mask = encoder.tokens(sample)  # BadImage: one sentence
    ids = enc["input_ids"][0].tolist()
    tokenizer = encoder.processor.tokenizer
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    media = ("image", "video")
    segments: list[tuple[str, str | None]] = []
    run: list[int] = []
    label = None

    def flush():
        if not run:
            return
        if label in media:
            segments.append((f"[{len(run)} {'visual' if label == 'image' else 'video'} tokens]", label))
        else:
            segments.append((tokenizer.decode(run, skip_special_tokens=False), label))

    visual, count = [], 0
    for token, trained in zip(ids, mask):
        kind = "image" if token == pad_id else "video" if token == video_id else ("trained" if trained else None)
        if kind != label:
            flush()
            if label in media:
                visual.append(count)
            run, label, count = [], kind, 0
        run.append(token)
        count += 1
    flush()
    if label in media:
        visual.append(count)
    return RowView(sample.row, list(sample.images), segments, len(ids) - sum(visual), visual, sum(mask), len(ids))


def row_markdown_summary(view: RowView) -> str:
    per_image = ", ".join(str(n) for n in view.visual_tokens) or "none"
    return (f"**Row {view.row}**: {view.total_tokens} tokens = {view.text_tokens} text "
            f"+ {sum(view.visual_tokens)} visual (per image or frame pair: {per_image}); "
            f"{view.trained_tokens} trained (assistant), {view.total_tokens - view.trained_tokens} masked.")

