"""Did it help? Base and adapter on the same input, one model in memory.

The base loads once; the adapter is attached with peft and switched off with
``disable_adapter()`` for the base's answer, so both answers come from the same weights
and the same decoding settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.data.sample import IMAGE_TAG, VIDEO_TAG, Sample, Turn
from workbench.errors import UserError
from workbench.runs import adapter_base  # noqa: F401  (the CLI and the Inference tab ask it here)
from workbench.metrics import normalise  # noqa: F401  (also this module's interface: the normalised match)
from workbench.settings import RunConfig

log = logging.getLogger("workbench.inference")


@dataclass
class Decoding:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {self.max_new_tokens}.")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"temperature must be 0 (greedy) or a positive number, got {self.temperature}.")
        if not math.isfinite(self.top_p):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True,
                "temperature": self.temperature, "top_p": self.top_p}


def model_shape(name_or_path: str) -> dict | None:
    """The sizes an adapter depends on, from a local model's config.json (None when not local)."""
    from workbench.models import locate_model

    try:
        folder = locate_model(name_or_path).local_path
        if folder is None:
            return None
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UserError, OSError, json.JSONDecodeError):
        return None
    text = raw.get("text_config") or raw
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    return {k: text.get(k, raw.get(k)) for k in keys}


def check_adapter_base(adapter_dir: str | Path, trained_on: str, base: str) -> None:
    """An adapter only fits the base it was trained on: compare the two models' sizes when both are local."""
    if not trained_on or trained_on == base:
        return
    want, have = model_shape(trained_on), model_shape(base)
    if want and have and want != have:
        diff = ", ".join(f"{k} {want[k]} vs {have[k]}" for k in want if want[k] != have[k])
        raise UserError(f"The adapter in {adapter_dir} was trained on '{trained_on}', which differs from '{base}' "
                        f"({diff}): choose base '{trained_on}' or an adapter trained on '{base}'.")


class Comparer:
    """The base model with one adapter attached; answers with the adapter off and on."""

    def __init__(self, base: str, adapter_dir: str | Path | None = None, config: RunConfig | None = None,
                 quantization: str = "none"):
        from workbench.models import fetch_model
        from workbench.models.processors import load_processor
        from workbench.training.loading import load_model

        # the base answers unquantised whatever the run trained on: an adapter trained on a
        # 4-bit base (QLoRA) is a plain LoRA adapter, served with the bf16 base; a quantised
        # base only for checking an adapter on the base it was trained on
        self.config = (config or RunConfig()).replace(model={"quantization": quantization})
        self.base = base
        path = str(fetch_model(base))
        self.processor = load_processor(path)
        self.processor.tokenizer.padding_side = "left"
        self.model = load_model(path, self.config)
        self.adapter_dir = None
        from workbench.data.downloads import Downloads

        # URL images: fetched once; a failure is not retried for every answer
        self.downloads = Downloads(allow_private=self.config.data.allow_private_urls)
        self._encoder = None
        if adapter_dir:
            self.attach(adapter_dir)
        self.model.eval()

    def attach(self, adapter_dir: str | Path) -> None:
        from peft import PeftModel

        trained_on, _ = adapter_base(adapter_dir)
        check_adapter_base(adapter_dir, trained_on, self.base)
        if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
            raise UserError(f"{adapter_dir} holds no adapter_model.safetensors: the workbench loads adapters only "
                            "as safetensors (a pickled adapter_model.bin is never unpickled). Save the adapter "
                            "again with safetensors.")
        try:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir))
        except (RuntimeError, ValueError, KeyError) as exc:
            log.exception("adapter load failed")
            raise UserError(f"The adapter in {adapter_dir} does not fit base model '{self.base}' "
                            f"({str(exc).splitlines()[0][:160]}): pick the base it was trained on.") from None
        self.adapter_dir = str(adapter_dir)

    @property
    def encoder(self):
        """The training encoder: images sized and video frames sampled with the run's data settings."""
        from workbench.data.collate import SampleEncoder
        from workbench.data.videos import defaults_from

        if self._encoder is None:
            d = self.config.data
            self._encoder = SampleEncoder(self.processor, d.max_length, d.min_pixels, d.max_pixels, defaults_from(d))
            self._encoder.downloads = self.downloads
        return self._encoder

    def frame_strip(self, sample: Sample) -> str | None:
        """A PNG strip of the frames the model sees for the row's first video (None when it has none)."""
        from dataclasses import replace

        from workbench.data.preview import frame_strip
        from workbench.data.problems import BadImage
        from workbench.paths import home

        if not sample.videos:
            return None
        try:
            sampled = self.encoder.videos(replace(sample, videos=sample.videos[:1],
                                                  video_options=[sample.video_option(0)]))[0]
        except (BadImage, OSError):
            return None
        return frame_strip(sampled, home() / "thumbnails")

    def _inputs(self, sample: Sample):
        from workbench.data.problems import IMAGE_MISSING, BadImage

        text = self.processor.apply_chat_template(sample.prompt_messages(), tokenize=False, add_generation_prompt=True)
        try:
            enc = self.encoder.processor_inputs(text, sample)
        except FileNotFoundError as exc:
            raise BadImage(IMAGE_MISSING, _sentence(exc.strerror)) from None
        except BadImage as exc:
            raise BadImage(exc.kind, _sentence(str(exc))) from None
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def answer(self, sample: Sample, use_adapter: bool, decoding: Decoding | None = None) -> dict:
        import contextlib

        import torch

        decoding = decoding or Decoding()
        inputs = self._inputs(sample)
        off = self.model.disable_adapter() if (self.adapter_dir and not use_adapter) else contextlib.nullcontext()
        start = time.perf_counter()
        from workbench.training.loading import tiny_model_threads

        with torch.inference_mode(), off, tiny_model_threads(self.model):
            output = self.model.generate(**inputs, **decoding.generate_kwargs())
        seconds = time.perf_counter() - start
        new = output[0, inputs["input_ids"].shape[1]:]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        return {"text": text, "new_tokens": int(new.shape[0]), "seconds": seconds,
                "tokens_per_s": new.shape[0] / max(seconds, 1e-9)}

    def compare(self, sample: Sample, decoding: Decoding | None = None) -> dict:
        return {"base": self.answer(sample, False, decoding), "adapter": self.answer(sample, True, decoding)}


def prompt_sample(prompt: str, image=None, system: str | None = None, video=None) -> Sample:
    """A one-question Sample (the assistant turn is a placeholder the prompt never includes).

    ``image``: a path (relative to the current folder), ``file://`` URI, data URI, http(s) URL,
    or a PIL image in memory. ``video``: a video file's path (frames sampled with the run's
    video settings when answered). One or the other, not both."""
    if not prompt or not prompt.strip():
        raise UserError("The prompt is empty: type a question.")
    if isinstance(image, str):
        image = image.strip() or None
    if isinstance(video, str):
        video = video.strip() or None
    if image is not None and video is not None:
        raise UserError("An image and a video were both given: ask about one at a time (clear the image or the video).")
    images, videos = [], []
    if image is not None:
        images = [_checked_image(image)]
        if IMAGE_TAG not in prompt:
            prompt = IMAGE_TAG + prompt
    if video is not None:
        videos = [_checked_video(video)]
        if VIDEO_TAG not in prompt:
            prompt = VIDEO_TAG + prompt
    turns = ([Turn("system", system)] if system else []) + [Turn("user", prompt), Turn("assistant", "-")]
    return Sample(turns=turns, images=images, videos=videos)


def _checked_image(image):
    from workbench.data.images import read_image_info
    from workbench.data.refs import FILE, kind_of, normalise

    if isinstance(image, str):
        image = normalise(image, os.getcwd())
        if kind_of(image) == FILE and Path(image).is_dir():
            raise UserError(f"{image} is a folder, not an image file: pass one image (.png, .jpg).")
        if kind_of(image) == FILE and not Path(image).is_file():
            raise UserError(f"Image {image} does not exist: check the path.")
    info = read_image_info(image)
    if info.error:
        raise UserError(_sentence(info.error))
    return image


def _checked_video(video) -> str:
    """A local video file's absolute path, its header read (frames are sampled when answering)."""
    from workbench.data.problems import BadImage
    from workbench.data.refs import FILE, kind_of, normalise
    from workbench.data.videos import read_video_info

    try:
        video = normalise(str(video), os.getcwd())
    except BadImage as exc:
        raise UserError(_sentence(str(exc).replace("image", "video", 1))) from None
    if kind_of(video) == FILE:
        if Path(video).is_dir():
            raise UserError(f"{video} is a folder, not a video file: pass one video (.mp4, .webm, .mov, ...).")
        if not Path(video).is_file():
            raise UserError(f"Video {video} does not exist: check the path.")
    info = read_video_info(video)
    if info.error:
        raise UserError(_sentence(info.error))
    return video


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def heldout_rows(path: str | Path | None = None, limit: int = 8, model: str = "",
                 allow_private_urls: bool = False, config: RunConfig | None = None) -> tuple[list[Sample], list[dict]]:
    """The first ``limit`` usable rows of a dataset file (the demo's held-out rows when no path is
    given), and the rows skipped on the way: ``{"row", "reason"}``, images and videos checked as
    ``data check`` does with ``config``'s data settings (the run's; the defaults without one),
    grounding boxes written as ``model``'s family writes them."""
    from workbench.data.downloads import Downloads
    from workbench.data.formats import load_samples
    from workbench.data.grounding import grounding_style
    from workbench.data.images import ImageHeaders
    from workbench.data.stats import pixels_per_token
    from workbench.data.problems import Problem
    from workbench.data.validation import measure, measure_videos
    from workbench.data.video_counts import VideoHeaders
    from workbench.data.videos import defaults_from

    if limit <= 0:
        raise UserError(f"The number of held-out rows must be positive, got {limit}.")
    if not path or not str(path).strip():
        from workbench.demo import ensure_demo

        path = ensure_demo().heldout
    loaded = load_samples(Path(str(path).strip()).expanduser())
    headers = ImageHeaders(downloads=Downloads(allow_private=allow_private_urls))
    videos = VideoHeaders()
    candidates = loaded.samples[:limit * 2]
    headers.prefetch(ref for sample in candidates for ref in sample.images)
    problems = {p.row: p.reason for p in loaded.problems}
    samples = []
    d = (config or RunConfig()).data
    for sample in loaded.samples:
        if len(samples) == limit:
            break
        sample, _, problem = measure(sample, headers, d.min_pixels, d.max_pixels, pixels_per_token(model),
                                     grounding_style(model))
        if problem is None and sample.videos:  # a video the model cannot read is skipped like a missing image
            counts = measure_videos(sample, headers, videos, defaults_from(d), pixels_per_token(model))
            problem = counts if isinstance(counts, Problem) else None
        if problem:
            problems[sample.row] = problem.reason
        else:
            samples.append(sample)
    last = samples[-1].row if len(samples) == limit else float("inf")
    skipped = [{"row": row, "reason": reason} for row, reason in sorted(problems.items()) if row < last]
    if not samples:
        first = f" (row {skipped[0]['row']}: {skipped[0]['reason']})" if skipped else ""
        raise UserError(f"{path} has no usable rows for a held-out check{first}: open it on the Dataset tab to see "
                        "every problem.")
    return samples, skipped


def heldout_samples(path: str | Path | None = None, limit: int = 8) -> list[Sample]:
    """The first ``limit`` usable rows of a dataset file; the demo's held-out rows when no path is given."""
    return heldout_rows(path, limit)[0]


def heldout_check(comparer: Comparer, samples: list[Sample], decoding: Decoding | None = None,
                  skipped: list[dict] | None = None, metric: str | None = None) -> dict:
    """Answer each row with base and adapter; exact and normalised match against the expected answer,
    and the task metric evaluation during training uses (``workbench.metrics``: ``metric``, else the
    run's training.eval_metric, auto by default, chosen from the same rows the same way).

    A row whose image cannot be read is skipped with its sentence (``problems``), as are the rows
    in ``skipped`` (from ``heldout_rows``); accuracy counts the rows answered."""
    from workbench.metrics import choose_metric, score, summary

    from workbench.data.images import thumbnail
    from workbench.data.problems import BadImage
    from workbench.data.refs import short
    from workbench.data.videos import describe
    from workbench.paths import home

    metric = choose_metric(samples, metric or comparer.config.training.eval_metric)
    rows, problems, scored = [], list(skipped or []), []
    for sample in samples:
        try:
            answers = comparer.compare(sample, decoding)
        except BadImage as exc:
            problems.append({"row": sample.row, "reason": str(exc).rstrip(".")})
            continue
        expected = sample.answer
        image = sample.images[0] if sample.images else None
        video = sample.videos[0] if sample.videos else None
        if image is not None:
            shown = thumbnail(image, home() / "thumbnails", downloads=comparer.downloads)
        else:  # a video row shows the frames the model saw
            shown = comparer.frame_strip(sample) if video is not None else None
        rows.append({
            "row": sample.row, "image": short(image) if image is not None else None,
            "video": describe(video) if video is not None else None, "thumbnail": shown,
            "prompt": sample.prompt_messages()[-1]["content"][-1].get("text", "") if sample.prompt_messages() else "",
            "expected": expected, "base": answers["base"]["text"], "adapter": answers["adapter"]["text"],
            "base_match": answers["base"]["text"] == expected, "adapter_match": answers["adapter"]["text"] == expected,
            "base_match_normalised": normalise(answers["base"]["text"]) == normalise(expected),
            "adapter_match_normalised": normalise(answers["adapter"]["text"]) == normalise(expected),
        })
        scored.append({side: score(metric, answers[side]["text"], expected) for side in ("base", "adapter")})
        rows[-1].update({f"{side}_score": scored[-1][side].score for side in ("base", "adapter")})
    problems.sort(key=lambda p: p["row"])
    if not rows and problems:
        raise UserError(f"None of the {len(samples)} held-out row(s) could be answered (row {problems[0]['row']}: "
                        f"{problems[0]['reason']}): fix the images or videos, or pick another file.")
    n = max(len(rows), 1)
    return {
        "rows": rows,
        "problems": problems,
        "base_accuracy": sum(r["base_match"] for r in rows) / n,
        "adapter_accuracy": sum(r["adapter_match"] for r in rows) / n,
        "base_accuracy_normalised": sum(r["base_match_normalised"] for r in rows) / n,
        "adapter_accuracy_normalised": sum(r["adapter_match_normalised"] for r in rows) / n,
        "metric": metric,
        **{f"{side}_{key}": value for side in ("base", "adapter")
           for key, value in summary(metric, [s[side] for s in scored]).items()},
    }
