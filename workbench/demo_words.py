"""The demo's words: the colours and shapes its pictures show, the questions asked about them, what
the base answers before training, the settings a CPU run learns them with, and the text the demo
tokenizer is trained on. Apart from ``workbench.demo`` (which builds the files) and
``workbench.demo_model`` (which builds the models), both of which read them.
"""

from __future__ import annotations

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

# Settings a short CPU run needs to learn the demo (used when the model is "demo").
DEMO_TRAINING = {
    "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "language-and-merger"},
    "training": {"learning_rate": 3e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
                 "max_steps": 400, "per_device_train_batch_size": 8,
                 "gradient_accumulation_steps": 1, "save_steps": 100, "logging_steps": 5,
                 "gradient_checkpointing": False},
    "data": {"max_length": 256, "min_pixels": 3136, "max_pixels": 112 * 112},
}

# Settings a short CPU run needs to learn the video demo (workbench.demo_video, "--dataset demo-video").
# The data fields are qwen-vl-utils' video knobs: every frame of the 8-frame, 4 fps clips, at 64 x 64
# (56 x 56 for 28-pixel families), 4 temporal patches x 4 merged tokens = 16 visual tokens a video.
# The merger is trained in full: with LoRA on it (the image demo's setting) 300 steps left the Qwen2-VL
# demo at chance where a full merger reached 1.0 (docs/video.md); the motion the frozen tower's 2-frame
# patches encode is a faint feature to pull out. Qwen3-VL learns it between 300 and 600 steps, hence 600.
DEMO_VIDEO_TRAINING = {
    "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "language-all-linear", "merger": "full"},
    "training": {"learning_rate": 3e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
                 "max_steps": 600, "per_device_train_batch_size": 8,
                 "gradient_accumulation_steps": 1, "save_steps": 100, "logging_steps": 5,
                 "gradient_checkpointing": False},
    "data": {"max_length": 256, "video_fps": 4.0, "video_max_frames": 8,
             "video_min_pixels": 3136, "video_max_pixels": 64 * 64},
}


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
