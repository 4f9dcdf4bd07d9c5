"""Does each family's tiny demo learn the video demo, and only from the frames' order?

Builds the video rows (``workbench.demo_video``) and the family's demo model, reads each mp4
with PyAV, sizes the frames as qwen-vl-utils would (a multiple of patch x merge inside the
demo's pixel bounds) and encodes them straight through the family's processor (no
workbench data layer), then trains a LoRA adapter (peft) with ``DEMO_VIDEO_TRAINING`` and
scores greedy answers on the held-out rows for:

- ``base``: the demo model as built, before any training;
- ``adapter``: the adapter trained on the videos;
- ``reversed_flipped``: how often the adapter, shown a held-out video backwards, answers the
  opposite direction (the order of the frames, not their content, carries the answer);
- ``blind``: an adapter trained and asked the same way on "videos" of the first frame
  repeated, which hold everything a single frame holds and no motion.

The last line is one JSON object per run of the script: {"model": {"base", "adapter",
"blind", "train_seconds", ...}}.

    python benchmarks/video_demo_learning.py [--model demo|demo-qwen2.5-vl|demo-qwen3-vl|all] [--max-steps N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_frames(path: Path):
    """Every frame of the mp4, uint8 (frames, height, width, 3)."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def sized(frames, factor: int, min_pixels: int, max_pixels: int):
    """(frames, 3, h, w) float tensor at qwen-vl-utils' size for these bounds."""
    import torch
    from qwen_vl_utils.vision_process import smart_resize

    height, width = frames.shape[1:3]
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    return torch.nn.functional.interpolate(video, size=(h, w), mode="bilinear", antialias=True).clamp(0, 255)


class Encoder:
    def __init__(self, processor, family, settings: dict):
        self.processor, self.settings = processor, settings
        self.factor = int(family.demo_vision.get("patch_size", 14)) * 2
        tokenizer = processor.tokenizer
        self.header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def video(self, path: Path, blind: bool | str):
        d = self.settings
        frames = read_frames(path)[: d["video_max_frames"]]
        if blind == "reversed":
            frames = frames[::-1].copy()
        elif blind:
            frames = frames[:1].repeat(len(frames), axis=0)
        return sized(frames, self.factor, d["video_min_pixels"], d["video_max_pixels"])

    def __call__(self, row: dict, folder: Path, blind: bool, prompt_only: bool = False) -> dict:
        import torch

        from workbench.data.collate import IGNORE_INDEX, assistant_mask

        question = row["messages"][0]["content"].replace("<video>", "")
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        if not prompt_only:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": row["messages"][1]["content"]}]})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt_only)
        video = self.video(folder / row["videos"][0], blind)
        metadata = {"fps": self.settings["video_fps"], "total_num_frames": len(video),
                    "frames_indices": list(range(len(video)))}
        enc = self.processor(text=[text], videos=[video], return_tensors="pt", do_resize=False,
                             video_metadata=[metadata], do_sample_frames=False)
        ids = enc["input_ids"][0]
        if not prompt_only:
            mask = torch.tensor(assistant_mask(ids.tolist(), self.header, self.end_id))
            enc["labels"] = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))[None]
        return dict(enc)


def batch(items: list[dict], pad_id: int) -> dict:
    import torch

    from workbench.data.collate import IGNORE_INDEX

    longest = max(item["input_ids"].shape[1] for item in items)

    def padded(key, value):
        return torch.cat([torch.nn.functional.pad(item[key], (0, longest - item[key].shape[1]), value=value)
                          for item in items])

    out = {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0),
           "pixel_values_videos": torch.cat([item["pixel_values_videos"] for item in items]),
           "video_grid_thw": torch.cat([item["video_grid_thw"] for item in items])}
    if "labels" in items[0]:
        out["labels"] = padded("labels", IGNORE_INDEX)
    if "mm_token_type_ids" in items[0]:
        out["mm_token_type_ids"] = padded("mm_token_type_ids", 0)
    return out


def load(name: str):
    from transformers import AutoProcessor

    from workbench.demo import demo_family, ensure_demo

    family = demo_family(name)
    paths = ensure_demo(name=name)
    model = family.transformers_class("model_class").from_pretrained(paths.model)
    return model, AutoProcessor.from_pretrained(paths.model), family


def train(name: str, rows: list, folder: Path, settings: dict, blind: bool, seed: int):
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.settings import LoraSettings
    from workbench.training.parts import full_modules, lora_targets

    torch.manual_seed(seed)
    model, processor, family = load(name)
    encode = Encoder(processor, family, settings["data"])
    items = [encode(row, folder, blind) for row in rows]
    lora, t = settings["lora"], settings["training"]
    # the workbench's own translation of the lora settings: targets per part, fully trained parts
    # (lora.merger: full) in peft's modules_to_save, so disabling the adapter restores them too
    parts = LoraSettings(**lora)
    model = get_peft_model(model, LoraConfig(r=parts.rank, lora_alpha=parts.alpha, lora_dropout=parts.dropout,
                                             target_modules=lora_targets(parts, family),
                                             modules_to_save=full_modules(model, parts, family) or None))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t["learning_rate"],
                                  weight_decay=0.0)
    steps, size = t["max_steps"], t["per_device_train_batch_size"]
    warmup = max(1, int(steps * t["warmup_ratio"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    order = random.Random(seed)
    model.train()
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        loss = model(**batch(order.sample(items, size), processor.tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    return model, processor, encode, seconds, losses


def accuracy(model, processor, encode, rows: list, folder: Path, blind: bool) -> tuple[float, list[str]]:
    import torch

    answers = []
    with torch.no_grad():
        for row in rows:
            inputs = encode(row, folder, blind, prompt_only=True)
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            answers.append(processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True).strip())
    right = sum(a == row["messages"][1]["content"] for a, row in zip(answers, rows))
    return right / len(rows), answers


def measure(name: str, settings: dict, controls: bool = True, seed: int = 0) -> dict:
    from workbench.demo_video import ensure_video_demo

    paths = ensure_video_demo()
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    train_rows, heldout = read(paths.train), read(paths.heldout)
    model, processor, family = load(name)
    base, base_answers = accuracy(model, processor, Encoder(processor, family, settings["data"]), heldout, paths.data,
                                  blind=False)
    model, processor, encode, seconds, losses = train(name, train_rows, paths.data, settings, blind=False, seed=seed)
    adapter, answers = accuracy(model, processor, encode, heldout, paths.data, blind=False)
    _, reversed_answers = accuracy(model, processor, encode, heldout, paths.data, blind="reversed")
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    flipped = sum(a == opposite[r["messages"][1]["content"]] for a, r in zip(reversed_answers, heldout)) / len(heldout)
    result = {"base": base, "adapter": adapter, "reversed_flipped": flipped, "train_seconds": round(seconds, 1),
              "steps": settings["training"]["max_steps"], "final_loss": round(sum(losses[-10:]) / 10, 3),
              "adapter_answers": answers[:8], "base_answers": base_answers[:4]}
    if controls:
        model, processor, encode, _, losses = train(name, train_rows, paths.data, settings, blind=True, seed=seed)
        result["blind"], blind_answers = accuracy(model, processor, encode, heldout, paths.data, blind=True)
        result["blind_final_loss"] = round(sum(losses[-10:]) / 10, 3)
        result["blind_answers"] = blind_answers[:8]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", help="demo, demo-qwen2.5-vl, demo-qwen3-vl or all.")
    parser.add_argument("--max-steps", type=int, help="Override the demo's max_steps.")
    parser.add_argument("--lr", type=float, help="Override the demo's learning rate.")
    parser.add_argument("--rank", type=int, help="Override the demo's LoRA rank (alpha = 2 x rank).")
    parser.add_argument("--targets", help="Override the demo's LoRA target preset.")
    parser.add_argument("--merger", choices=["lora", "full"], help="Override the demo's lora.merger.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the LoRA weights and the batch order.")
    parser.add_argument("--no-controls", action="store_true", help="Skip the frames-blind control run.")
    args = parser.parse_args(argv)

    import copy

    import torch

    from workbench.demo_words import DEMO_VIDEO_TRAINING

    torch.set_num_threads(1)  # see workbench.training.loading.limit_threads_for_tiny_models
    settings = copy.deepcopy(DEMO_VIDEO_TRAINING)
    if args.max_steps:
        settings["training"]["max_steps"] = args.max_steps
    if args.lr:
        settings["training"]["learning_rate"] = args.lr
    if args.rank:
        settings["lora"].update(rank=args.rank, alpha=2 * args.rank)
    if args.targets:
        settings["lora"]["target_modules"] = args.targets
    if args.merger:
        settings["lora"]["merger"] = args.merger
    names = ("demo", "demo-qwen2.5-vl", "demo-qwen3-vl") if args.model == "all" else (args.model,)
    results = {}
    for name in names:
        results[name] = measure(name, settings, controls=not args.no_controls, seed=args.seed)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    print(json.dumps({name: {k: v for k, v in r.items() if not k.endswith("answers")} for name, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
