"""Token lengths per row: text tokens through the chat template, visual tokens via smart_resize.

A row's length is ``template + content + visual``:

- template: the chat template's own tokens for the row's shape (roles in order, images per
  turn), rendered once per shape with the model's tokenizer (each image counts its
  ``<|vision_start|><|image_pad|><|vision_end|>``);
- content: the turns' text pieces, tokenized on their own. The template puts a special
  token or a newline on both sides of every piece, so the sum equals tokenizing the
  rendered row (the tests pin this against the processor's real ``input_ids``);
- visual: per image, ``(H/f)*(W/f)`` after qwen-vl-utils' ``smart_resize`` at the
  current min/max pixels, minus the one ``<|image_pad|>`` already counted; f is the model
  family's pixels per token (28 for Qwen2-VL and Qwen2.5-VL, 32 for Qwen3-VL).

Tokenizing is the slow part (about 1 MB of text per second on this project's 2-core
runner). Up to ``EXACT_BYTES`` of content is tokenized exactly; above it a random sample
of pieces gives the tokenizer's bytes-per-token on this data, every row is estimated
from its UTF-8 size, and the rows that matter are recounted exactly: the longest 1% and
every row within 15% of max_length, so p95 is estimated but max and every too-long
verdict are exact (docs/data-scale.md has the figures).
"""

from __future__ import annotations

import functools
import random

from workbench.data.sample import IMAGE_TAG, MEDIA_TAG, VIDEO_TAG, Sample
from workbench.errors import UserError

IMAGE_FACTOR = 28  # qwen-vl-utils: patch 14 x merge 2 (Qwen2-VL, Qwen2.5-VL); Qwen3-VL: 16 x 2 = 32
EXACT_BYTES = 4_000_000
CALIBRATION_PIECES = 2000
# Qwen2-VL's template without a tokenizer: default system prompt (11), per turn
# <|im_start|> role \n ... <|im_end|> \n (5), per image start/pad/end (3).
FALLBACK_SYSTEM, FALLBACK_TURN, FALLBACK_IMAGE, FALLBACK_BYTES_PER_TOKEN = 11, 5, 3, 4.0
NEWLINE = "\n"  # one token in every Qwen vocabulary; see _pieces


@functools.lru_cache(maxsize=65536)
def visual_token_count(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR) -> int:
    """Tokens the LLM sees for one image: (H/f)*(W/f) after smart_resize. ValueError if too thin."""
    from qwen_vl_utils import smart_resize

    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // factor) * (w // factor)


def resized_size(height: int, width: int, options: dict, min_pixels: int, max_pixels: int,
                 factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """(height, width) the model sees an image at: qwen-vl-utils' ``fetch_image`` rule, the row's own
    sizing keys (``workbench.data.sample.IMAGE_OPTIONS``) before the run's min/max pixels."""
    from qwen_vl_utils import smart_resize

    if "resized_height" in options and "resized_width" in options:
        return smart_resize(options["resized_height"], options["resized_width"], factor=factor)
    return smart_resize(height, width, factor=factor, min_pixels=options.get("min_pixels", min_pixels),
                        max_pixels=options.get("max_pixels", max_pixels))


def pixels_per_token(model: str) -> int:
    """The side of the pixel square one visual token covers, from the model's family (28 when unknown)."""
    from workbench.models import family_of_model

    family = family_of_model(model)
    return family.pixels_per_token if family else IMAGE_FACTOR


def load_tokenizer(model: str):
    """The model's tokenizer from local files only (a demo, a folder, or the HF cache); for a model
    whose family is known but whose files are not here (a preset not downloaded), the real Qwen
    vocabulary with the family's chat template (``workbench.models.vocabulary``); else None."""
    from pathlib import Path

    from workbench.demo import ensure_demo, is_demo
    from workbench.models import family_of_model, locate_model
    from workbench.models.vocabulary import qwen_tokenizer

    source = None
    if is_demo(model):
        source = str(ensure_demo(name=model).model)
    elif Path(str(model)).expanduser().is_dir():
        source = str(Path(model).expanduser())
    else:
        try:
            found = locate_model(model)
            source = str(found.local_path) if found.local_path else None
        except UserError:
            source = None
    if source:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, KeyError):
            pass
    family = family_of_model(model)
    return qwen_tokenizer(family.model_type) if family else None


def model_context(model: str) -> int | None:
    """The model's max_position_embeddings from its config.json (demo, preset, folder or cached hub id), or None."""
    from workbench.errors import UserError
    from workbench.models import load_model_config

    try:
        config = load_model_config(model)
    except UserError:
        return None
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _shape(sample: Sample) -> tuple:
    return tuple((t.role, t.text.count(IMAGE_TAG), t.text.count(VIDEO_TAG)) for t in sample.turns)


def _pieces(sample: Sample) -> list[str]:
    """The turns' text pieces as the encoder tokenizes them. A prompt turn's first piece follows the
    template's newline in the same tokenized span, and a newline or space it starts with merges
    with that newline: it is counted with the newline in front (which ``_exact_rows`` takes off
    again). An answer is tokenized on its own (``workbench.data.spans``)."""
    out = []
    for turn in sample.turns:
        for i, piece in enumerate(MEDIA_TAG.split(turn.text)[::2]):
            if piece:
                out.append(_Joined(NEWLINE + piece) if i == 0 and turn.role != "assistant" and piece[0].isspace()
                           else piece)
    return out


class _Joined(str):
    """A piece counted with the template's newline in front: one token less is its own."""


class TextTokenCounter:
    """Text tokens per row (template + content) with one tokenizer, or a documented estimate."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer if tokenizer is not None and getattr(tokenizer, "chat_template", None) else None
        self._templates: dict[tuple, int] = {}
        self.method = "exact" if self.tokenizer is not None else "estimated (no tokenizer: 4 bytes per token)"
        self._bytes_per_token: float | None = None  # measured by count() when it estimates

    def template_tokens(self, sample: Sample) -> int:
        shape = _shape(sample)
        if shape not in self._templates:
            if self.tokenizer is None:
                extra = 0 if shape[0][0] == "system" else FALLBACK_SYSTEM
                self._templates[shape] = extra + FALLBACK_TURN * len(shape) + FALLBACK_IMAGE * sum(n + m for _, n, m in shape)
            else:  # a video renders as an image does (start, one pad, end); the media's order changes no count
                messages = [{"role": role, "content": [{"type": "image"}] * n + [{"type": "video"}] * m}
                            for role, n, m in shape]
                text = self.tokenizer.apply_chat_template(messages, tokenize=False)
                self._templates[shape] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._templates[shape]

    def _exact(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        # A batched processor call (the encoder pads a row's pieces) leaves padding switched on in the
        # shared backend; a plain tokenizer call switches it off again.
        if backend is not None and hasattr(backend, "encode_batch_fast") and backend.padding is None \
                and backend.truncation is None:
            return [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _exact_rows(self, pieces: list[list[str]], template: list[int]) -> list[int]:
        flat = [p for ps in pieces for p in ps]
        counts, out, i = self._exact(flat), [], 0
        counts = [n - isinstance(p, _Joined) for n, p in zip(counts, flat)]
        for ps, t in zip(pieces, template):
            out.append(t + sum(counts[i:i + len(ps)]))
            i += len(ps)
        return out

    def count(self, samples: list[Sample], near: int | None = None) -> list[int]:
        """Text tokens of each sample; exact within EXACT_BYTES, else estimated as the docstring says."""
        pieces = [_pieces(s) for s in samples]
        sizes = [sum(len(p.encode("utf-8")) for p in ps) for ps in pieces]
        template = [self.template_tokens(s) for s in samples]
        if self.tokenizer is not None and sum(sizes) <= EXACT_BYTES:
            self.method = "exact"
            return self._exact_rows(pieces, template)
        if self.tokenizer is None:
            return [t + round(size / FALLBACK_BYTES_PER_TOKEN) for t, size in zip(template, sizes)]
        flat = [p for ps in pieces for p in ps]
        calibration = random.Random(0).sample(flat, min(CALIBRATION_PIECES, len(flat)))
        ratio = sum(len(p.encode("utf-8")) for p in calibration) / max(1, sum(self._exact(calibration)))
        self._bytes_per_token = ratio
        out = [t + round(size / ratio) for t, size in zip(template, sizes)]
        order = sorted(range(len(out)), key=out.__getitem__, reverse=True)
        recount = set(order[: max(1, len(out) // 100)])
        if near:
            recount |= {i for i, n in enumerate(out) if n >= 0.85 * near}
        chosen = sorted(recount)
        for i, n in zip(chosen, self._exact_rows([pieces[i] for i in chosen], [template[i] for i in chosen])):
            out[i] = n
        self.method = (f"estimated ({ratio:.2f} bytes per token measured on {len(calibration)} pieces); "
                       f"exact for the longest 1% and rows near max_length ({len(chosen)} rows)")
        return out


    def trained(self, samples: list[Sample]) -> list[int]:
        """Tokens training learns per row: each trained assistant turn's text, tokenized on its own,
        and its ``<|im_end|>`` (``workbench.data.spans``). Exact with a tokenizer within EXACT_BYTES,
        else at the bytes per token ``count`` measured (4 without a tokenizer)."""
        answers = [[t.text for t in s.turns if t.trained and t.text] for s in samples]
        turns = [sum(1 for t in s.turns if t.trained) for s in samples]
        sizes = [sum(len(p.encode("utf-8")) for p in ps) for ps in answers]
        if self.tokenizer is not None and sum(sizes) <= EXACT_BYTES:
            return [n + extra for n, extra in zip(self._exact_rows(answers, [0] * len(answers)), turns)]
        ratio = self._bytes_per_token or FALLBACK_BYTES_PER_TOKEN
        return [round(size / ratio) + extra for size, extra in zip(sizes, turns)]


def summarize(totals: list[int], visual: list[int]) -> dict:
    """p50/p95/max/mean of total tokens per row (p95: the smallest length 95% of rows fit in) and the visual share."""
    import numpy as np

    if not totals:
        return {"rows": 0, "p50": 0, "p95": 0, "max": 0, "mean": 0.0, "visual_share": 0.0}
    arr = np.asarray(totals)
    return {
        "rows": int(arr.size),
        "p50": int(np.percentile(arr, 50, method="inverted_cdf")),
        "p95": int(np.percentile(arr, 95, method="inverted_cdf")),
        "max": int(arr.max()),
        "mean": round(float(arr.mean()), 1),
        "visual_share": round(float(sum(visual)) / max(1, int(arr.sum())), 4),
    }


def summarize_trained(trained: list[int]) -> dict:
    """p95 and max of the trained (answer) tokens per row: what the planner's loss term needs."""
    import numpy as np

    if not trained:
        return {"trained_p95": 0, "trained_max": 0}
    arr = np.asarray(trained)
    return {"trained_p95": int(np.percentile(arr, 95, method="inverted_cdf")), "trained_max": int(arr.max())}


def histogram(totals: list[int], bins: int = 30):
    """A pandas DataFrame of total tokens per row in about ``bins`` bars of a round width.

    Columns: ``tokens`` (the bar's label, " 40-49": a category, so each label sits under its own
    bar; padded so that sorting the labels as text keeps them in token order), ``rows`` (count)
    and ``start`` (first token count of the bar)."""
    import numpy as np
    import pandas as pd

    if not totals:
        return pd.DataFrame({"tokens": [], "rows": [], "start": []})
    low, high = min(totals), max(totals)
    width = _round_width(-(-(high - low + 1) // bins))
    first = low // width * width
    counts = np.bincount((np.asarray(totals) - first) // width)
    starts = [first + i * width for i in range(len(counts))]
    digits = len(str(starts[-1]))  # right-aligned with spaces: the plot sorts labels as text
    labels = [f"{s:>{digits}}" if width == 1 else f"{s:>{digits}}-{s + width - 1}" for s in starts]
    return pd.DataFrame({"tokens": labels, "rows": counts.astype(int), "start": starts})


def _round_width(width: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``width``."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= width:
                return step * scale
        scale *= 10
