"""The embedded demos: a tiny real model per family, its tokenizer and processor, and a dataset.

Everything is built deterministically on first use into ``<home>/demo/<version>[-family]``
with no network. ``demo`` is a Qwen2-VL, ``demo-qwen2.5-vl`` a Qwen2.5-VL (windowed SwiGLU
tower) and ``demo-qwen3-vl`` a Qwen3-VL (deepstack, QK-norm): each is transformers' own
model class at toy sizes (a 2-block vision tower, the patch merger, mrope, 2 decoder
layers), saved with ``save_pretrained`` so it loads through the same ``from_pretrained``
path as a real checkpoint (``workbench.demo_model`` builds them). The tokenizer is a small
byte-level BPE trained on the demo's own text, with Qwen's special tokens and the family's
published chat template. The dataset is coloured shapes on grey
backgrounds with "what colour" questions, in ms-swift JSONL form, split into train and
held-out rows. The weights are random except for a few text-only steps that teach the base to answer
"I do not know." to any question; a short LoRA run (see ``DEMO_TRAINING``) then teaches
it the colours (docs/demo.md has the figures).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from workbench.demo_words import (  # noqa: F401  (the demo's words are part of this module's interface)
    BASE_ANSWER, BASE_PRETRAIN_STEPS, COLORS, DEMO_TRAINING, DEMO_VIDEO_TRAINING, GENERIC_QUESTIONS, QUESTIONS, SHAPES,
    tokenizer_corpus)
from workbench.paths import build_once, home

DEMO_VERSION = "v2"
IMAGE_SIDE_CHOICES = (56, 84)  # multiples of 28: 4 or 6 or 9 visual tokens per image (Qwen3-VL: 4 or 6 or 9 at 32)
TRAIN_ROWS = 320
HELDOUT_ROWS = 40

@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def heldout(self) -> Path:
        return self.data / "heldout.jsonl"


def demo_family(name: str = "demo"):
    """The family of a demo name ('demo' is Qwen2-VL)."""
    from workbench.errors import UserError
    from workbench.models.families import families_by_demo

    family = families_by_demo().get(str(name).strip().lower())
    if family is None:
        raise UserError(f"'{name}' is not a demo: use {', '.join(DEMO_NAMES)}.")
    return family


def demo_paths(root: str | Path | None = None, name: str = "demo") -> DemoPaths:
    if root:
        return DemoPaths(Path(root))
    family = demo_family(name)
    suffix = "" if family.demo == "demo" else "-" + family.model_type
    return DemoPaths(home() / "demo" / (DEMO_VERSION + suffix))


def ensure_demo(root: str | Path | None = None, name: str = "demo") -> DemoPaths:
    """Build the demo ``name`` once (atomically: a half-built folder is never used) and return its paths."""
    from workbench.demo_model import build_model, build_processor

    paths = demo_paths(root, name)
    family = demo_family(name)

    def write(staging: Path) -> None:
        built = DemoPaths(staging)
        write_dataset(built.data)
        processor = build_processor(family)
        processor.save_pretrained(built.model)
        build_model(processor.tokenizer, family).save_pretrained(built.model)

    build_once(paths.root, DEMO_VERSION, write)
    return paths


# ---------------------------------------------------------------------------- dataset
def _draw(color: str, shape: str, rng: random.Random):
    from PIL import Image, ImageDraw

    width, height = rng.choice(IMAGE_SIDE_CHOICES), rng.choice(IMAGE_SIDE_CHOICES)
    grey = rng.randint(90, 170)
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    size = rng.randint(int(min(width, height) * 0.5), int(min(width, height) * 0.8))
    x0, y0 = rng.randint(0, width - size), rng.randint(0, height - size)
    box = (x0, y0, x0 + size, y0 + size)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    return image


def demo_rows(count: int, seed: int, image_prefix: str):
    """Yield (row, image) pairs: an ms-swift record and the PIL image it references."""
    rng = random.Random(seed)
    colors = list(COLORS)
    for i in range(count):
        color, shape = colors[i % len(colors)], rng.choice(SHAPES)
        question = rng.choice(QUESTIONS).format(shape=shape)
        name = f"{image_prefix}_{i:04d}.png"
        row = {
            "messages": [
                {"role": "user", "content": f"<image>{question}"},
                {"role": "assistant", "content": color},
            ],
            "images": [f"images/{name}"],
        }
        yield row, _draw(color, shape, rng)


def write_dataset(folder: Path) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", TRAIN_ROWS, 1), ("heldout", HELDOUT_ROWS, 2)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for row, image in demo_rows(count, seed, split):
                image.save(folder / row["images"][0])
                out.write(json.dumps(row) + "\n")


DEMO_NAMES = ("demo", "demo-qwen2.5-vl", "demo-qwen3-vl")


def is_demo(name_or_path: str) -> bool:
    return str(name_or_path).strip().lower() in DEMO_NAMES


def __getattr__(name):
    # build_processor, demo_model_config, build_model, teach_base_answer live in demo_model.
    if name in ("build_processor", "demo_model_config", "build_model", "teach_base_answer", "SPECIAL_TOKENS"):
        from workbench import demo_model

        return getattr(demo_model, name)
    raise AttributeError(name)
