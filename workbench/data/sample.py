"""The one internal row type that training, statistics and preview share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
MEDIA_TAG = re.compile("(<image>|<video>)")
ROLES = ("system", "user", "assistant")
# qwen-vl-utils' per-image sizing keys (``fetch_image``): a row may size each image itself.
IMAGE_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width")


@dataclass
class Turn:
    role: str  # system | user | assistant
    text: str  # images are placed by IMAGE_TAG, videos by VIDEO_TAG, each in order
    loss: bool | None = None  # ms-swift's per-message flag: False keeps an answer out of the loss

    @property
    def trained(self) -> bool:
        """Whether training learns this turn's text: assistant turns, unless marked ``loss: false``."""
        return self.role == "assistant" and self.loss is not False


@dataclass
class Sample:
    turns: list[Turn]
    images: list[str] = field(default_factory=list)  # resolved paths, one per IMAGE_TAG
    row: int = 0  # 1-based record number (the line number for JSONL)
    # per image, qwen-vl-utils' sizing keys the row gave for it ({} for most): see IMAGE_OPTIONS
    image_options: list[dict] = field(default_factory=list)
    boxes: list = field(default_factory=list)  # grounding boxes (workbench.data.grounding.Box), drawn in previews
    refs: list[str] = field(default_factory=list)  # grounding labels not yet written into the text
    # one per VIDEO_TAG: a video file's absolute path, or a frame list (a list of image references)
    videos: list = field(default_factory=list)
    # per video, qwen-vl-utils' keys the row gave for it (fps, nframes, max_pixels, ...: workbench.data.videos)
    video_options: list[dict] = field(default_factory=list)

    @property
    def ungrounded(self) -> bool:
        """Grounding placeholders still wait for the image sizes (``workbench.data.grounding.ground``)."""
        return bool(self.refs or self.boxes) and any("<ref-object>" in t.text or "<bbox>" in t.text
                                                     for t in self.turns)

    def options(self, index: int) -> dict:
        return self.image_options[index] if index < len(self.image_options) else {}

    def video_option(self, index: int) -> dict:
        return self.video_options[index] if index < len(self.video_options) else {}

    def messages(self) -> list[dict]:
        """HF chat messages with content parts, as processors' chat templates expect."""
        out, images, videos = [], iter(self.images), iter(self.videos)
        for turn in self.turns:
            parts = []
            for piece in MEDIA_TAG.split(turn.text):
                if piece == IMAGE_TAG:
                    parts.append({"type": "image", "image": next(images, None)})
                elif piece == VIDEO_TAG:
                    parts.append({"type": "video", "video": next(videos, None)})
                elif piece:
                    parts.append({"type": "text", "text": piece})
            out.append({"role": turn.role, "content": parts})
        return out

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the last assistant turn: an inference prompt."""
        messages = self.messages()
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last]

    @property
    def answer(self) -> str:
        """The last assistant turn's text (the expected answer in held-out checks)."""
        return [t.text for t in self.turns if t.role == "assistant"][-1]

    @property
    def first_user_text(self) -> str:
        return next((t.text for t in self.turns if t.role == "user"), "")
