"""What is wrong with a row: a ``Problem`` with a stable kind and one sentence naming the fix."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import UserError

# Problem kinds (stable names: the UI groups by them, tests and --json consumers match them).
MALFORMED_JSON = "malformed-json"
WRONG_TYPE = "wrong-type"
MISSING_FIELD = "missing-field"
UNKNOWN_ROLE = "unknown-role"
NO_ASSISTANT = "no-assistant"
EMPTY_CONTENT = "empty-content"
IMAGE_COUNT = "image-count"
IMAGE_REFERENCE = "image-reference"  # a reference the workbench cannot read in any case (s3://, file://otherhost/)
IMAGE_MISSING = "image-missing"
IMAGE_UNREADABLE = "image-unreadable"
IMAGE_UNREACHABLE = "image-unreachable"  # an http(s) image that could not be downloaded
IMAGE_TOO_LARGE = "image-too-large"
IMAGE_SHAPE = "image-shape"
TOO_LONG = "too-long"
VIDEO_MISSING = "video-missing"
VIDEO_UNREADABLE = "video-unreadable"  # not a video, no video stream, a URL, frames of different sizes, bad options
VIDEO_TOO_SHORT = "video-too-short"  # fewer than the 2 frames the model reads at a time
VIDEO_TOO_LARGE = "video-too-large"
AUDIO = "audio"  # no Qwen-VL model hears
GROUNDING = "grounding"  # objects / <ref-object> / <bbox> that do not match


def clip(text: str, limit: int = 300) -> str:
    """A reason quotes the row's own values (paths, roles): keep a 5 MB value from flooding the screen."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


@dataclass
class Problem:
    row: int  # 1-based record number (line number for JSONL)
    reason: str
    kind: str = "invalid"

    def __post_init__(self):
        self.reason = clip(self.reason)


class BadImage(UserError):
    """An image reference that cannot be read, with its problem kind and one sentence.

    A ``UserError``, so inference and the CLI show the sentence as they show any other; data
    checks turn it into a ``Problem`` of its ``kind`` for the row."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
