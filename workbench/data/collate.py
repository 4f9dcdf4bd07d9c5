"""Samples -> model inputs: chat template, images and videos through the processor, trained-token labels.

A video's frames are sampled and sized by qwen-vl-utils (``workbench.data.videos.sample_video``)
and reach the processor already sized, with their metadata (Qwen2.5-VL's seconds per frame
pair, Qwen3-VL's timestamps come from it), so the processor neither samples nor resizes them again.

The trained tokens come from the chat template's own spans (``workbench.data.spans``): the
prompt before each answer and the answer are tokenized apart, as the model generates the
answer after its prompt. Trained: each assistant answer (unless the row marks it ``loss:
false``) and its closing ``<|im_end|>``. Masked (-100): system, user, headers, image tokens,
answers marked ``loss: false`` and padding.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import torch

from workbench.data.images import load_image
from workbench.data.problems import IMAGE_MISSING, BadImage
from workbench.data.sample import Sample
from workbench.data.spans import template_segments
from workbench.data.videos import VIDEO_MISSING, sample_video

VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

IGNORE_INDEX = -100


def assistant_mask(input_ids: list[int], header: list[int], end_id: int) -> list[bool]:
    """True for tokens after each assistant header, up to and including <|im_end|>: the fallback
    for templates without prefix spans (``workbench.data.spans``)."""
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


def sized_image(image, options: dict, min_pixels: int, max_pixels: int, factor: int):
    """The image resized as qwen-vl-utils' ``fetch_image`` sizes it: the row's own keys
    (``resized_height``/``resized_width``, ``min_pixels``/``max_pixels``), else the run's limits."""
    from qwen_vl_utils.vision_process import fetch_image

    element = {"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels, **options}
    return fetch_image(element, image_patch_size=factor // 2)


class SampleEncoder:
    """Turns one Sample into input_ids, labels, pixel_values and image_grid_thw (pixel_values_videos and
    video_grid_thw for its videos). ``video``: the run's qwen-vl-utils video keys
    (``workbench.data.videos.defaults_from``)."""

    def __init__(self, processor, max_length: int, min_pixels: int, max_pixels: int, video: dict | None = None):
        from workbench.data.downloads import Downloads

        self.processor = processor
        self.downloads = Downloads()  # URL images come from the cache; a failure is not retried per epoch
        self.max_length = max_length
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.video = dict(video or {})
        self.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        image_processor = getattr(processor, "image_processor", None)
        self.factor = getattr(image_processor, "patch_size", 14) * getattr(image_processor, "merge_size", 2)
        tokenizer = processor.tokenizer
        self.header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def render(self, sample: Sample, add_generation_prompt: bool = False, prompt_only: bool = False) -> str:
        return self._render(sample.prompt_messages() if prompt_only else sample.messages(), add_generation_prompt)

    def pixels(self, sample: Sample) -> list:
        """The row's images, decoded; sized as qwen-vl-utils sizes them when the row sizes any itself."""
        out = []
        for ref in sample.images:
            try:
                out.append(load_image(ref, self.downloads))
            except BadImage as exc:
                if exc.kind == IMAGE_MISSING:  # checked before the run: it vanished since, and the run can resume
                    raise FileNotFoundError(errno.ENOENT, str(exc), ref) from None
                raise
        if any(sample.image_options):
            out = [sized_image(image, sample.options(i), self.min_pixels, self.max_pixels, self.factor)
                   for i, image in enumerate(out)]
        return out

    def videos(self, sample: Sample) -> list:
        """The row's videos as qwen-vl-utils samples them (``workbench.data.videos.SampledVideo`` each)."""
        out = []
        for i, ref in enumerate(sample.videos):
            try:
                out.append(sample_video(ref, sample.video_option(i), self.video, self.factor, self.downloads))
            except BadImage as exc:
                if exc.kind in (IMAGE_MISSING, VIDEO_MISSING):  # vanished since the check: the run can resume
                    raise FileNotFoundError(errno.ENOENT, str(exc), str(ref)) from None
                raise
        return out

    def _call_processor(self, texts: list[str], sample: Sample, images: list | None = None,
                        videos: list | None = None) -> dict:
        images = self.pixels(sample) if images is None else images
        videos = self.videos(sample) if videos is None else videos
        kwargs = {"images_kwargs": {"do_resize": False} if any(sample.image_options) else {"size": self.size}}
        if videos:
            kwargs["videos"] = [v.frames for v in videos]
            kwargs["videos_kwargs"] = {"video_metadata": [v.metadata() for v in videos], "do_resize": False,
                                       "do_sample_frames": False}
            if hasattr(self.processor.video_processor, "cap_pixels_per_frame"):
                # its per-frame cap applies only to its own resizing, which qwen-vl-utils did already;
                # named, it stops the processor's warning about it
                kwargs["videos_kwargs"]["cap_pixels_per_frame"] = False
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True, **kwargs)

    def processor_inputs(self, text: str, sample: Sample) -> dict:
        """The processor's inputs for one rendered text (an inference prompt) with the row's images."""
        return self._call_processor([text], sample)

    def tokens(self, sample: Sample) -> tuple[dict, list[bool]]:
        """(the processor's output for the row, one row of ids; trained flag per token)."""
        segments = template_segments(self._render, sample.messages(), [t.trained for t in sample.turns])
        if segments is None:
            if any(t.loss is False for t in sample.turns):
                raise ValueError(f"row {sample.row} marks an answer 'loss: false', which this model's chat template "
                                 "cannot keep apart (it renders earlier turns differently once later turns follow)")
            enc = self._call_processor([self.render(sample)], sample)
            ids = enc["input_ids"][0].tolist()
            return enc, assistant_mask(ids, self.header, self.end_id)
        enc = self._call_processor([text for text, _ in segments], sample)
        keep = enc["attention_mask"].bool()
        mask: list[bool] = []
        for i, (_, trained) in enumerate(segments):
            mask.extend([trained] * int(keep[i].sum()))
        joined = {key: enc[key][keep].unsqueeze(0) for key in ("input_ids", "attention_mask", "mm_token_type_ids")
                  if key in enc}
        return {**enc, **joined}, mask

    def encode(self, sample: Sample) -> dict:
        enc, mask = self.tokens(sample)
        ids = enc["input_ids"][0]
        if ids.shape[0] > self.max_length:
            raise ValueError(f"row {sample.row} has {ids.shape[0]} tokens, more than max_length "
                             f"{self.max_length}: raise max_length or lower max_pixels")
        labels = torch.where(torch.tensor(mask), ids, torch.full_like(ids, IGNORE_INDEX))
        item = {"input_ids": ids, "attention_mask": enc["attention_mask"][0], "labels": labels}
        if "mm_token_type_ids" in enc:
            item["mm_token_type_ids"] = enc["mm_token_type_ids"][0]
        if "pixel_values" in enc:
            item["pixel_values"] = enc["pixel_values"]
            item["image_grid_thw"] = enc["image_grid_thw"]
        for key in VIDEO_KEYS:
            if key in enc:
                item[key] = torch.as_tensor(enc[key])
        return item


class SampleDataset(torch.utils.data.Dataset):
    """Encodes lazily, so a 100k-row file costs nothing until rows are drawn."""

    def __init__(self, samples: list[Sample], encoder: SampleEncoder, lengths: list[int] | None = None):
        """``lengths``: tokens per sample as the data check counted them (what packing places by)."""
        self.samples, self.encoder, self.lengths = samples, encoder, lengths

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.encoder.encode(self.samples[index])


@dataclass
class Collator:
    """Right-pads a batch; concatenates the images' and videos' patches and grids."""

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
        for key in VIDEO_KEYS:
            with_videos = [item[key] for item in items if key in item]
            if with_videos:
                batch[key] = torch.cat(with_videos)
        return batch
