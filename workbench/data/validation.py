"""One pass over a dataset file: every row parsed, images checked from headers, lengths counted.

``check_dataset`` is what ``data check``, the Dataset tab and the benchmark call. It never
raises for a bad row; only an unusable file raises ``UserError`` (from ``load_samples``).
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from workbench.data.formats import LoadResult, load_samples
from workbench.data.grounding import GroundingError, grounding_style, ground
from workbench.data.images import ImageHeaders
from workbench.data.problems import GROUNDING, IMAGE_SHAPE, TOO_LONG, Problem
from workbench.data.refs import short
from workbench.data.sample import Sample
from workbench.data.video_counts import TimestampText, VideoCount, VideoHeaders, count_video, text_before_videos
from workbench.data.stats import (IMAGE_FACTOR, TextTokenCounter, pixels_per_token, resized_size, summarize,
                                  summarize_trained, visual_token_count)


@dataclass
class RowLength:
    row: int
    text_tokens: int  # everything but the visual tokens (chat template included)
    visual_tokens: list[int]  # one per image, then one per video (its <|video_pad|> tokens)
    video_frames: list[int] = field(default_factory=list)  # frames sampled per video

    @property
    def total(self) -> int:
        return self.text_tokens + sum(self.visual_tokens)


@dataclass
class DatasetReport:
    path: str
    format: str
    rows: int  # every record, broken ones included
    samples: list[Sample]  # rows with no problem at all: what training would use
    problems: list[Problem]  # sorted by row
    parsed: dict[int, Sample] = field(default_factory=dict)  # row -> Sample, problem rows whose text parsed included
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # (user, assistant) of rows that did not parse
    lengths: dict[int, RowLength] = field(default_factory=dict)  # row -> tokens, for rows with readable images
    trained: dict[int, int] = field(default_factory=dict)  # row -> tokens the loss learns, for the same rows
    stats: dict = field(default_factory=dict)
    min_pixels: int = 3136
    max_pixels: int = 1003520
    max_length: int | None = None
    context: int | None = None  # the model's max_position_embeddings, when known
    image_folder: str | None = None

    @property
    def valid(self) -> int:
        return len(self.samples)

    def problems_by_kind(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems).most_common())

    def per_row(self) -> list[dict]:
        """For each valid row, in file order: its tokens (text + visual), visual and trained tokens, as
        training will see them."""
        rows = sorted(s.row for s in self.samples)
        out = []
        for row in rows:
            length = self.lengths[row]
            item = {"row": row, "tokens": length.total, "visual_tokens": sum(length.visual_tokens),
                    "trained_tokens": self.trained[row]}
            if length.video_frames:
                item["video_frames"] = list(length.video_frames)
            out.append(item)
        return out

    def totals(self) -> list[int]:
        return [length.total for length in self.lengths.values()]


def _lower(sample: Sample) -> str:
    return "max_pixels (or video_max_frames / video_max_pixels)" if sample.videos else "max_pixels"


@contextlib.contextmanager
def _no_cyclic_gc():
    """Parsing 100k rows makes millions of acyclic objects (JSON values, Samples); the cyclic
    collector would walk them again and again: about 40% of a check's time (docs/data-scale.md)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def measure(sample: Sample, headers: ImageHeaders, min_pixels: int, max_pixels: int, factor: int,
            style) -> tuple[Sample, list[int], Problem | None]:
    """(the sample with its grounding boxes written in ``style``, visual tokens per image, or the
    problem that stops it) from its images' headers."""
    tokens, sizes = [], []
    for i, image in enumerate(sample.images):
        info = headers(image)
        if info.error:
            return sample, tokens, Problem(sample.row, info.error, info.kind)
        try:
            if sample.options(i):
                h, w = resized_size(info.height, info.width, sample.options(i), min_pixels, max_pixels, factor)
                tokens.append((h // factor) * (w // factor))
            else:
                tokens.append(visual_token_count(info.height, info.width, min_pixels, max_pixels, factor))
        except ValueError:
            return sample, tokens, Problem(sample.row, f"image {short(image)} is {info.width}x{info.height}, longer "
                                                       "than 200 times its width or height: crop or pad it", IMAGE_SHAPE)
        sizes.append((info.width, info.height))
    if sample.ungrounded:
        try:
            sample = ground(sample, sample.refs, sizes, style, lambda i, w, h: resized_size(
                h, w, sample.options(i), min_pixels, max_pixels, factor))
        except GroundingError as exc:
            return sample, tokens, Problem(sample.row, str(exc), GROUNDING)
    return sample, tokens, None


def measure_videos(sample: Sample, headers: ImageHeaders, video_headers: VideoHeaders, video: dict,
                   factor: int) -> list[VideoCount] | Problem:
    """Each video's frames, size and tokens from headers (``workbench.data.video_counts``), or its problem."""
    out = []
    for i, ref in enumerate(sample.videos):
        count = count_video(ref, sample.video_option(i), video, factor, headers, video_headers, sample.row)
        if isinstance(count, Problem):
            return count
        out.append(count)
    return out


def _model_type(model: str) -> str | None:
    from workbench.models import family_of_model

    family = family_of_model(model) if model else None
    return family.model_type if family else None


def check_dataset(path: str | Path, format: str = "auto", max_length: int | None = None,
                  min_pixels: int = 3136, max_pixels: int = 1003520, tokenizer=None,
                  headers: ImageHeaders | None = None, image_folder: str | None = None,
                  context: int | None = None, model: str = "", factor: int | None = None,
                  video: dict | None = None) -> DatasetReport:
    """Parse, check images, count tokens; ``tokenizer`` None gives the documented estimate.

    A row longer than ``context`` (the model's max_position_embeddings, named by ``model``) is a
    problem whatever ``max_length`` says: the model cannot read it. Visual tokens use the pixels
    per token of ``model``'s family (``factor`` overrides it; 28 when neither says). ``video`` holds
    the run's qwen-vl-utils video keys (``workbench.data.videos.defaults_from``); each row's own
    keys go over them."""
    if factor is None:
        factor = pixels_per_token(model) if model else IMAGE_FACTOR
    with _no_cyclic_gc():
        return _check(path, format, max_length, min_pixels, max_pixels, tokenizer, headers, image_folder, context,
                      model, factor, video)


def _check(path, format, max_length, min_pixels, max_pixels, tokenizer, headers, image_folder, context,
           model, factor, video) -> DatasetReport:
    loaded: LoadResult = load_samples(path, format, image_folder)
    headers = ImageHeaders() if headers is None else headers  # an empty one is falsy (__len__)
    headers.prefetch(loaded.urls)
    problems = list(loaded.problems)
    measurable: list[Sample] = []
    visual: dict[int, list[int]] = {}
    frames: dict[int, list[int]] = {}
    extra: dict[int, int] = {}  # text a video adds beyond the template (Qwen3-VL's timestamps)
    video_headers = VideoHeaders()
    stamps = TimestampText(_model_type(model), tokenizer)
    style = grounding_style(model)
    for sample in loaded.samples:
        sample, tokens, problem = measure(sample, headers, min_pixels, max_pixels, factor, style)
        counts = [] if problem else measure_videos(sample, headers, video_headers, video or {}, factor)
        if isinstance(counts, Problem):
            problem = counts
        if problem:
            problems.append(problem)
        else:
            measurable.append(sample)
            visual[sample.row] = tokens + [c.tokens for c in counts]
            frames[sample.row] = [c.frames for c in counts]
            extra[sample.row] = sum(stamps(c, b) for c, b in zip(counts, text_before_videos(sample)))
    counter = TextTokenCounter(tokenizer)
    limits = [n for n in (max_length, context) if n]
    text = counter.count(measurable, near=min(limits) if limits else None)
    lengths = {s.row: RowLength(s.row, n - len(visual[s.row]) + extra[s.row], visual[s.row], frames[s.row])
               for s, n in zip(measurable, text)}
    valid = []
    for sample in measurable:
        total = lengths[sample.row].total
        if context and total > context:
            problems.append(Problem(sample.row, f"row has {total} tokens after visual tokens, more than the "
                                                f"{context} positions model '{model or 'in use'}' can read "
                                                "(max_position_embeddings in its config.json): shorten or split the "
                                                f"row, or lower {_lower(sample)}", TOO_LONG))
        elif max_length and total > max_length:
            problems.append(Problem(sample.row, f"row has {total} tokens after visual tokens, more than max_length "
                                                f"{max_length}: raise max_length or lower {_lower(sample)}", TOO_LONG))
        else:
            valid.append(sample)
    problems.sort(key=lambda p: p.row)
    totals = [length.total for length in lengths.values()]
    stats = summarize(totals, [sum(length.visual_tokens) for length in lengths.values()])
    trained = dict(zip((s.row for s in measurable), counter.trained(measurable)))
    stats.update(summarize_trained(list(trained.values())))
    stats.update({"text_tokens": counter.method, "unique_images": len(headers),
                  "min_pixels": min_pixels, "max_pixels": max_pixels})
    video_frames = [n for length in lengths.values() for n in length.video_frames]
    if video_frames:
        stats.update({"videos": len(video_frames), "video_frames_min": min(video_frames),
                      "video_frames_max": max(video_frames), "unique_videos": len(video_headers)})
    parsed = {**loaded.unusable, **{s.row: s for s in loaded.samples}, **{s.row: s for s in measurable}}
    return DatasetReport(str(path), loaded.format, loaded.rows, valid, problems, parsed, loaded.texts, lengths,
                         trained, stats, min_pixels, max_pixels, max_length, context, image_folder or None)
