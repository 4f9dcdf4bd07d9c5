"""A video's frames and tokens from headers alone, for ``data check`` (``workbench.data.validation``).

A file's count, frame rate and size come from its container header (``read_video_info``), a
frame list's from its images' headers; ``video_plan`` then gives the frames and size
qwen-vl-utils' ``fetch_video`` will produce, so a check of 10k videos decodes none of them.

Tokens per video: ``<|video_pad|>`` x (frames / 2) x (H / f) x (W / f) (temporal patch 2,
spatial merge 2). Qwen3-VL writes each pair of frames as ``<t seconds><|vision_start|>pads
<|vision_end|>`` where the chat template wrote one start/pad/end for the whole video; the
timestamps are the processor's own (``Qwen3VLProcessor._calculate_timestamps``: the mean of
each pair's times, one decimal), tokenized with the model's tokenizer. The first one follows the
row's text without a special token between, and the real Qwen vocabulary merges a space or
punctuation there with its "<" ("?<" is one token): that boundary is tokenized joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench.data.images import ImageHeaders
from workbench.data.problems import IMAGE_SHAPE, Problem
from workbench.data.videos import (VIDEO_TOO_SHORT, VIDEO_UNREADABLE, BadVideo, VideoInfo, check_decoded_size,
                                   describe, is_frame_list, read_video_info, video_element)

TIMESTAMP_FALLBACK_TOKENS = 6  # "<", digits, ".", digit, " seconds", ">" without a tokenizer


@dataclass
class VideoCount:
    frames: int
    height: int
    width: int
    tokens: int  # <|video_pad|> tokens
    indices: list[int] = field(default_factory=list)
    fps: float = 0.0


def frame_limits(nframes: int, ele: dict, factor: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) a frame is sized within: ``fetch_video``'s rule, its ``total_pixels``
    shared over the frames and its per-frame token limits (128 and 768 tokens by default)."""
    from qwen_vl_utils import vision_process as vp

    min_pixels = ele.get("min_pixels", vp.VIDEO_MIN_TOKEN_NUM * factor * factor)
    total_pixels = ele.get("total_pixels", vp.MODEL_SEQ_LEN * factor * factor * 0.9)
    limit = max(min(vp.VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * vp.FRAME_FACTOR),
                int(min_pixels * 1.05))
    return min_pixels, min(ele.get("max_pixels", limit), limit)


def video_plan(height: int, width: int, total_frames: int, fps: float, ele: dict, factor: int,
               frame_list: bool = False) -> tuple[int, int, int]:
    """(frames, height, width) ``fetch_video`` gives for a video of this header, without decoding it.

    For a frame list qwen-vl-utils first sizes each frame as an image at twice the factor (it
    passes its pixels-per-token as the patch size), then sizes the stack again as a video."""
    from qwen_vl_utils import smart_resize
    from qwen_vl_utils import vision_process as vp

    if frame_list:
        if "resized_height" in ele and "resized_width" in ele:
            height, width = smart_resize(ele["resized_height"], ele["resized_width"], factor=2 * factor)
        else:
            double = 2 * factor
            height, width = smart_resize(height, width, factor=double,
                                         min_pixels=ele.get("min_pixels", vp.IMAGE_MIN_TOKEN_NUM * double ** 2),
                                         max_pixels=ele.get("max_pixels", vp.IMAGE_MAX_TOKEN_NUM * double ** 2))
        nframes = vp.ceil_by_factor(total_frames, vp.FRAME_FACTOR)
    else:
        _, _, total = vp.calculate_video_frame_range(ele, total_frames, fps)
        nframes = vp.smart_nframes(ele, total_frames=total, video_fps=fps)
    if "resized_height" in ele and "resized_width" in ele:
        h, w = smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
    else:
        min_pixels, max_pixels = frame_limits(nframes, ele, factor)
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return nframes, h, w


def video_tokens(nframes: int, height: int, width: int, factor: int) -> int:
    """<|video_pad|> tokens for a video: (frames / temporal patch 2) x (H / factor) x (W / factor)."""
    return math.ceil(nframes / 2) * (height // factor) * (width // factor)


class VideoHeaders:
    """``read_video_info`` once per file, for one check."""

    def __init__(self):
        self._cache: dict[str, VideoInfo] = {}

    def __call__(self, path: str) -> VideoInfo:
        info = self._cache.get(path)
        if info is None:
            info = self._cache[path] = read_video_info(path)
        return info

    def __len__(self) -> int:
        return len(self._cache)


def count_video(ref, options: dict, defaults: dict, factor: int, headers: ImageHeaders,
                video_headers: VideoHeaders, row: int) -> VideoCount | Problem:
    """The frames, size and tokens a video will give, or the Problem that stops it."""
    import torch
    from qwen_vl_utils.vision_process import calculate_video_frame_range

    ele = video_element(ref, options, defaults, factor)
    if is_frame_list(ref):
        sizes = set()
        for frame in ref:
            info = headers(frame)
            if info.error:
                return Problem(row, f"video {describe(ref)}: {info.error}", info.kind)
            sizes.add((info.width, info.height))
        if len(sizes) > 1:
            return Problem(row, f"video {describe(ref)} has frames of different sizes "
                                f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:3])}): give frames of one size "
                                "(qwen-vl-utils stacks them)", VIDEO_UNREADABLE)
        (width, height), = sizes
        total, fps = len(ref), float(ele.get("sample_fps", 2.0))
    else:
        info = video_headers(ref)
        if info.error:
            return Problem(row, info.error, info.kind)
        width, height, total, fps = info.width, info.height, info.frames, info.fps
    try:
        nframes, h, w = video_plan(height, width, total, fps, ele, factor, frame_list=is_frame_list(ref))
    except ValueError as exc:
        if "nframes should in interval" in str(exc):
            return Problem(row, f"video {describe(ref)} has {total} frame(s) where the model reads at least 2 (its "
                                "temporal patch), or the row's nframes is above its frame count: give a longer "
                                "video or fewer frames", VIDEO_TOO_SHORT)
        if "aspect ratio" in str(exc):
            return Problem(row, f"video {describe(ref)} is {width}x{height}, longer than 200 times its width or "
                                "height: crop or pad it", IMAGE_SHAPE)
        return Problem(row, f"video {describe(ref)} cannot be sampled ({exc}): check the video settings and the "
                            "row's options", VIDEO_UNREADABLE)
    except AssertionError as exc:
        return Problem(row, f"video {describe(ref)} cannot be sampled ({exc or 'min_pixels above max_pixels'}): "
                            "check the video settings and the row's min/max pixels", VIDEO_UNREADABLE)
    if is_frame_list(ref):
        indices = list(range(nframes))
    else:
        try:
            check_decoded_size(ref, nframes, width, height)
        except BadVideo as exc:
            return Problem(row, str(exc), exc.kind)
        start, end, _ = calculate_video_frame_range(ele, total, fps)
        indices = torch.linspace(start, end, nframes).round().long().tolist()
    return VideoCount(nframes, h, w, video_tokens(nframes, h, w, factor), indices, fps)


def text_before_videos(sample) -> list[str]:
    """Per video of the row, the text right before its tag in its turn ('' after a tag or at the turn's start)."""
    from workbench.data.sample import MEDIA_TAG, VIDEO_TAG

    out = []
    for turn in sample.turns:
        parts = MEDIA_TAG.split(turn.text)
        out += [parts[j - 1] for j in range(1, len(parts), 2) if parts[j] == VIDEO_TAG]
    return out


def timestamps(indices: list[int], fps: float, temporal_patch: int = 2) -> list[str]:
    """Qwen3-VL's text before each pair of frames, as its processor writes it."""
    indices = list(indices)
    if len(indices) % temporal_patch:
        indices += [indices[-1]] * (temporal_patch - len(indices) % temporal_patch)
    fps = fps or 24  # the processor's own fallback
    times = [i / fps for i in indices]
    return [f"<{(times[i] + times[i + temporal_patch - 1]) / 2:.1f} seconds>"
            for i in range(0, len(times), temporal_patch)]


class TimestampText:
    """Text tokens a video adds beyond the chat template's one start/pad/end: 0 for Qwen2-VL and
    Qwen2.5-VL; Qwen3-VL's timestamps and a start/end pair per further pair of frames."""

    def __init__(self, model_type: str | None, tokenizer=None):
        self.on = model_type == "qwen3_vl"
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def __call__(self, count: VideoCount, before: str = "") -> int:
        """Tokens beyond the template's; ``before``: the text right before the video in its turn."""
        if not self.on:
            return 0
        texts = timestamps(count.indices, count.fps)
        joined = 0
        if before and self.tokenizer is not None:
            both = self.tokenizer([before + texts[0], before], add_special_tokens=False)["input_ids"]
            joined = len(both[0]) - len(both[1]) - self._tokens(texts[0])
        return sum(self._tokens(t) for t in texts) + 2 * (len(texts) - 1) + joined

    def _tokens(self, text: str) -> int:
        if text not in self._cache:
            if self.tokenizer is None:
                self._cache[text] = TIMESTAMP_FALLBACK_TOKENS
            else:
                self._cache[text] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._cache[text]
