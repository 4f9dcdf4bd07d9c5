"""Samples -> model inputs: chat template, images through the processor, assistant-only labels.

Qwen2-VL's chat template has no ``{% generation %}`` markers, so transformers'
``return_assistant_tokens_mask`` cannot find assistant tokens for real checkpoints; the
spans are found instead between each ``<|im_start|>assistant\\n`` header and its
``<|im_end|>`` in the token ids. Trained: the assistant's content and its closing
``<|im_end|>``. Masked (-100): system, user, headers, image tokens and padding.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import torch

from workbench.data.images import load_image
from workbench.data.problems import IMAGE_MISSING, BadImage
from workbench.data.sample import Sample

IGNORE_INDEX = -100


def assistant_mask(input_ids: list[int], header: list[int], end_id: int) -> list[bool]:
    """True for tokens the model learns: after each assistant header, up to and including <|im_end|>."""
    mask = [False] * len(input_ids)
    n, i = len(header), 0
    while i <= len(input_ids) - n:
        if input_ids[i:i + n] == header:
            j = i + n
            while j < len(input_ids):
                mask[j] = True
                if input_ids[j] == end_id:
                    break
                j += 1
            i = j + 1
        else:
            i += 1
    return mask


class SampleEncoder:
    """Turns one Sample into input_ids, labels, pixel_values and image_grid_thw."""

    def __init__(self, processor, max_length: int, min_pixels: int, max_pixels: int):
        from workbench.data.downloads import Downloads

        self.processor = processor
        self.downloads = Downloads()  # URL images come from the cache; a failure is not retried per epoch
        self.max_length = max_length
        self.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        tokenizer = processor.tokenizer
        self.header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def render(self, sample: Sample, add_generation_prompt: bool = False, prompt_only: bool = False) -> str:
        messages = sample.prompt_messages() if prompt_only else sample.messages()
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def processor_inputs(self, text: str, images: list) -> dict:
        pixels = []
        for ref in images:
            try:
                pixels.append(load_image(ref, self.downloads))
            except BadImage as exc:
                if exc.kind == IMAGE_MISSING:  # checked before the run: it vanished since, and the run can resume
                    raise FileNotFoundError(errno.ENOENT, str(exc), ref) from None
                raise
        images = pixels or None
        return self.processor(text=[text], images=images, return_tensors="pt", size=self.size)

    def encode(self, sample: Sample) -> dict:
        enc = self.processor_inputs(self.render(sample), sample.images)
        ids = enc["input_ids"][0]
        if ids.shape[0] > self.max_length:
            raise ValueError(f"row {sample.row} has {ids.shape[0]} tokens, more than max_length "
                             f"{self.max_length}: raise max_length or lower max_pixels")
        mask = torch.tensor(assistant_mask(ids.tolist(), self.header, self.end_id))
        labels = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
        item = {"input_ids": ids, "attention_mask": enc["attention_mask"][0], "labels": labels}
        if "mm_token_type_ids" in enc:
            item["mm_token_type_ids"] = enc["mm_token_type_ids"][0]
        if "pixel_values" in enc:
            item["pixel_values"] = enc["pixel_values"]
            item["image_grid_thw"] = enc["image_grid_thw"]
        return item


class SampleDataset(torch.utils.data.Dataset):
    """Encodes lazily, so a 100k-row file costs nothing until rows are drawn."""

    def __init__(self, samples: list[Sample], encoder: SampleEncoder):
        self.samples, self.encoder = samples, encoder

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.encoder.encode(self.samples[index])


@dataclass
class Collator:
    """Right-pads a batch; concatenates the images' patches and grids."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        longest = max(item["input_ids"].shape[0] for item in items)

        def pad(key, value):
            return torch.stack([
                torch.nn.functional.pad(item[key], (0, longest - item[key].shape[0]), value=value)
                for item in items
            ])

        batch = {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
        }
        if all("mm_token_type_ids" in item for item in items):
            batch["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
        with_images = [item for item in items if "pixel_values" in item]
        if with_images:
            batch["pixel_values"] = torch.cat([item["pixel_values"] for item in with_images])
            batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in with_images])
        return batch
