"""The embedded demo: a tiny real Qwen2-VL, its tokenizer and processor, and a dataset.

Everything is built deterministically on first use into ``<home>/demo/<version>`` with no
network: the model is transformers' ``Qwen2VLForConditionalGeneration`` at toy sizes (a
2-block vision tower, the patch merger, mrope, 2 decoder layers), saved with
``save_pretrained`` so it loads through the same ``from_pretrained`` path as a real
checkpoint. The tokenizer is a small byte-level BPE trained on the demo's own text, with
Qwen2-VL's special tokens and chat template. The dataset is coloured shapes on grey
backgrounds with "what colour" questions, in ms-swift JSONL form, split into train and
held-out rows. The weights are random except for a few text-only steps that teach the base to answer
"I do not know." to any question; a short LoRA run (see ``DEMO_TRAINING``) then teaches
it the colours (docs/demo.md has the figures).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workbench.paths import home

DEMO_VERSION = "v2"
IMAGE_SIDE_CHOICES = (56, 84)  # multiples of 28: 4 or 6 or 9 visual tokens per image
TRAIN_ROWS = 320
HELDOUT_ROWS = 40

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = (
    "What color is the shape?",
    "What color is the {shape}?",
    "Which color does the {shape} have? Answer with one word.",
    "Name the color of the shape in the picture.",
)

# The base is briefly taught, text only, to answer every question with one fluent sentence,
# so the side-by-side view shows "I do not know." against the adapter's colour.
BASE_ANSWER = "I do not know."
GENERIC_QUESTIONS = ("What is in the image?", "Describe the picture.", "What do you see?",
                     "How many objects are there?", "Is there a cat?", "What shape is it?")
BASE_PRETRAIN_STEPS = 20

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL's chat template (the one its processor ships), so the demo renders exactly as
# a real checkpoint does, default system prompt included.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Settings a short CPU run needs to learn the demo (used when the model is "demo").
DEMO_TRAINING = {
    "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "language-and-merger"},
    "training": {"learning_rate": 3e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
                 "max_steps": 400, "per_device_train_batch_size": 8,
                 "gradient_accumulation_steps": 1, "save_steps": 100, "logging_steps": 5,
                 "gradient_checkpointing": False},
    "data": {"max_length": 256, "min_pixels": 3136, "max_pixels": 112 * 112},
}


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


def demo_paths(root: str | Path | None = None) -> DemoPaths:
    return DemoPaths(Path(root) if root else home() / "demo" / DEMO_VERSION)


def ensure_demo(root: str | Path | None = None) -> DemoPaths:
    """Build the demo once (atomically: a half-built folder is never used) and return its paths."""
    paths = demo_paths(root)
    if (paths.root / "COMPLETE").exists():
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=paths.root.parent))
    try:
        built = DemoPaths(staging)
        write_dataset(built.data)
        processor = build_processor()
        processor.save_pretrained(built.model)
        build_model(processor.tokenizer).save_pretrained(built.model)
        (staging / "COMPLETE").write_text(DEMO_VERSION)
        try:
            os.rename(staging, paths.root)
        except OSError:  # another process finished first; theirs is as good as ours
            if not (paths.root / "COMPLETE").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
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


def tokenizer_corpus() -> list[str]:
    """Text the demo tokenizer is trained on: the demo's own words plus common English."""
    lines = ["You are a helpful assistant.", "system", "user", "assistant", "Picture", "Video"]
    lines += [q.format(shape=s) for q in QUESTIONS for s in SHAPES]
    lines += [f"The {s} is {c}." for s in SHAPES for c in COLORS]
    lines += list(COLORS) + list(SHAPES) + list(GENERIC_QUESTIONS) + [BASE_ANSWER]
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "What is in the image? Describe the picture in one sentence.",
        "Answer the question with a single word. Yes or no. How many objects are there?",
        "A photo of a cat, a dog, a car, a house, a tree and a person.",
        "0 1 2 3 4 5 6 7 8 9 10 100 1000",
    ]
    return lines * 4


# ---------------------------------------------------------------------------- processor
def build_processor():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768,
        chat_template=CHAT_TEMPLATE, padding_side="right",
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=DEMO_TRAINING["data"]["min_pixels"], max_pixels=DEMO_TRAINING["data"]["max_pixels"],
    )
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------------------- model
def demo_model_config(tokenizer):
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden, heads = 64, 4
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "initializer_range": 0.2,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": hidden, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False, architectures=["Qwen2VLForConditionalGeneration"],
    )


def build_model(tokenizer):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(demo_model_config(tokenizer))
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    teach_base_answer(model, tokenizer)
    return model


def teach_base_answer(model, tokenizer, steps: int = BASE_PRETRAIN_STEPS) -> None:
    """A few full-parameter steps on text-only chat rows: every question -> BASE_ANSWER."""
    import torch

    from workbench.data.collate import IGNORE_INDEX, assistant_mask

    questions = [q.format(shape=s) for q in QUESTIONS for s in SHAPES] + list(GENERIC_QUESTIONS)
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for question in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": BASE_ANSWER}], tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        rows.append((ids, [i if m else IGNORE_INDEX for i, m in zip(ids, assistant_mask(ids, header, end))]))
    longest = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (longest - len(lab)) for _, lab in rows])
    attention = (input_ids != pad).long()
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "visual" not in n], lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see workbench.training.loading.limit_threads_for_tiny_models
    try:
        model.train()
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def is_demo(name_or_path: str) -> bool:
    return str(name_or_path).strip().lower() == "demo"
