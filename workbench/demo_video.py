"""The video demo: "Which way does the dot move?", an answer no single frame shows.

Each row is a short mp4 of a white dot gliding left, right, up or down over a dark
background. The dot starts anywhere (uniform over the whole frame) and the frame wraps
around like a torus, so at every moment the dot's position is uniform whatever the
direction: one frame, any frame, says nothing about the answer; only the change between
frames does. The rows are ms-swift JSONL (``videos`` beside ``messages``, ``<video>`` in the
user's text), built deterministically on first use into ``<home>/demo/video-<version>``
with no network, like the image demo (``workbench.demo``). The dataset is the same for
every family: ``--dataset demo-video`` names it. ``DEMO_VIDEO_TRAINING`` (in
``workbench.demo_words``) holds the settings a short CPU run learns it with; docs/video.md
has the figures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from workbench.paths import build_once, home

VIDEO_DEMO_VERSION = "v1"
VIDEO_DEMO_NAMES = ("demo-video",)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VIDEO_QUESTIONS = (
    "Which way does the dot move?",
    "In which direction does the dot move?",
    "Which way does the dot go? Answer left, right, up or down.",
    "Where does the dot move to?",
)
FRAME_SIDE = 64  # Qwen2-VL resizes it to 56 (2 x 2 merged tokens a frame pair), Qwen3-VL keeps 64 (2 x 2 too)
FRAMES = 8  # 4 temporal patches of 2 frames: motion inside each pair and across pairs
FPS = 4  # 2-second clips; sampling at 4 fps reads every frame
DOT_RADIUS = 10
STEP = 12  # pixels a frame, under half the frame: each step (not the whole wrapped path) is unambiguous
TRAIN_ROWS = 960
HELDOUT_ROWS = 80


@dataclass(frozen=True)
class VideoDemoPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def heldout(self) -> Path:
        return self.root / "heldout.jsonl"


def is_demo_dataset(name: str) -> bool:
    return str(name).strip().lower() in VIDEO_DEMO_NAMES


def demo_dataset_file(name: str, split: str = "train") -> str:
    """The file a demo dataset name stands for (``split``: train or heldout); other names unchanged."""
    if not is_demo_dataset(name):
        return name
    paths = ensure_video_demo()
    return str(paths.heldout if split == "heldout" else paths.train)


def video_demo_paths(root: str | Path | None = None) -> VideoDemoPaths:
    return VideoDemoPaths(Path(root) if root else home() / "demo" / f"video-{VIDEO_DEMO_VERSION}")


def ensure_video_demo(root: str | Path | None = None) -> VideoDemoPaths:
    """Build the video rows once (atomically: a half-built folder is never used) and return their paths."""
    paths = video_demo_paths(root)
    build_once(paths.root, VIDEO_DEMO_VERSION, write_video_dataset)
    return paths


# ---------------------------------------------------------------------------- drawing
def dot_frames(start: tuple[float, float], direction: str, frames: int = FRAMES, side: int = FRAME_SIDE,
               radius: float = DOT_RADIUS, step: float = STEP):
    """The clip as uint8 arrays (frames, side, side, 3): the dot's centre moves ``step`` pixels a frame
    from ``start``, drawn on a torus (what leaves one edge enters at the opposite one)."""
    import numpy as np

    dx, dy = DIRECTIONS[direction]
    axis = np.arange(side, dtype=np.float32) + 0.5
    clip = np.zeros((frames, side, side, 3), dtype=np.uint8)
    for t in range(frames):
        cx, cy = start[0] + dx * step * t, start[1] + dy * step * t
        # the shortest way round the torus from each pixel to the centre
        ox = (axis - cx + side / 2) % side - side / 2
        oy = (axis - cy + side / 2) % side - side / 2
        inside = (oy[:, None] ** 2 + ox[None, :] ** 2) <= radius ** 2
        clip[t][inside] = 255
        clip[t][~inside] = 24
    return clip


def write_mp4(path: Path, clip, fps: int = FPS) -> None:
    """An H.264 mp4 (yuv420p, what every reader plays); one encoder thread so the bytes repeat."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "medium", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.thread_count = 1
        for array in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(_grey_yuv420p(array), format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _grey_yuv420p(array):
    """A grey RGB frame as yuv420p planes, built here rather than by swscale, whose output
    differed by a few levels between runs and so made the mp4 bytes differ too."""
    import numpy as np

    height, width = array.shape[:2]
    luma = array[:, :, 0]  # grey: R = G = B; full-range grey to limited-range luma (BT.601)
    planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    planes[:height] = (16 + luma.astype(np.float32) * (219 / 255)).round().astype(np.uint8)
    return planes


def video_rows(count: int, seed: int, prefix: str):
    """Yield (row, start, clip): an ms-swift record, the dot's start and the frames its mp4 holds.
    The directions take turns, so each is a quarter of the rows."""
    rng = random.Random(seed)
    names = list(DIRECTIONS)
    for i in range(count):
        direction = names[i % len(names)]
        start = (rng.uniform(0, FRAME_SIDE), rng.uniform(0, FRAME_SIDE))
        question = rng.choice(VIDEO_QUESTIONS)
        row = {
            "messages": [
                {"role": "user", "content": f"<video>{question}"},
                {"role": "assistant", "content": direction},
            ],
            "videos": [f"videos/{prefix}_{i:04d}.mp4"],
        }
        yield row, start, dot_frames(start, direction)


def write_video_dataset(folder: Path, train_rows: int = TRAIN_ROWS, heldout_rows: int = HELDOUT_ROWS) -> None:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train_rows, 11), ("heldout", heldout_rows, 12)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for row, _, clip in video_rows(count, seed, split):
                write_mp4(folder / row["videos"][0], clip)
                out.write(json.dumps(row) + "\n")
