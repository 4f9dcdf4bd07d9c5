"""Padding-free packing (data.packing): whole rows placed into sequences of up to max_length tokens.

A padded batch spends its compute on padding when 100-token rows share a batch with 3,000-token
rows. Packed, the rows of one step are laid end to end in ONE sequence (batch dimension 1, no
padding at all), as transformers' ``DataCollatorWithFlattening`` does for text models, with what
a Qwen-VL model needs on top:

- per-row 3-D mRoPE positions: each row's (temporal, height, width) positions are the model's own
  ``get_rope_index`` of that row alone, so they restart at each row and an image keeps the grid
  positions it has unpacked;
- a fourth, leading row of plain text positions (0..n-1 per row): Qwen2-VL, Qwen2.5-VL and
  Qwen3-VL take position_ids of shape (4, 1, T) as "packed" and, with no attention mask, build the
  block-diagonal causal mask from that row (``masking_utils.find_packed_sequence_indices`` for
  sdpa/eager; flash attention's varlen path reads the same positions): no token attends across rows.
  That holds only without a KV cache, so the batch says ``use_cache=False``;
- the first label of each row ignored, so the last token of one row never learns to predict the
  next row's first token (unpacked, nothing predicts a row's first token either).

Rows go into sequences by first-fit-decreasing over the epoch's lengths (the data check's token
counts, so nothing is encoded twice); a row is never split. The packing is a pure function of the
rows and max_length, so a resumed run rebuilds exactly the same sequences and Trainer's sampler
skips into them as it skips into rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from workbench.data.collate import IGNORE_INDEX, Collator


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into sequences of at most ``max_length`` tokens, by
    first-fit-decreasing: longest row first, each into the first sequence with room. Rows keep
    their order inside a sequence. O(n log n): a max-tree over the sequences' free room finds
    the first that fits."""
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        raise ValueError(f"row index {too_long[0]} has {lengths[too_long[0]]} tokens, more than max_length "
                         f"{max_length}: raise max_length or lower max_pixels")
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = [max_length] * (2 * size)  # sequences not opened yet have all their room: first fit opens them in order
    members: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need, node = lengths[index], 1
        while node < size:  # down to the leftmost leaf with enough room
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        leaf = node - size
        if leaf == len(members):
            members.append([])
        members[leaf].append(index)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return [sorted(rows) for rows in members]


class PackedDataset(torch.utils.data.Dataset):
    """A SampleDataset seen as packed sequences: item i is the list of the rows of sequence i."""

    def __init__(self, rows, max_length: int):
        """``rows``: a ``SampleDataset`` whose ``lengths`` (tokens per row, from the data check) are known."""
        self.rows, self.max_length = rows, max_length
        self.samples = rows.samples  # which rows train: ranks compare them (``setup.row_fingerprint``)
        self.packs = pack_rows(rows.lengths, max_length)

    def __len__(self):
        return len(self.packs)

    def __getitem__(self, index):
        return [self.rows[i] for i in self.packs[index]]

    @property
    def tokens(self) -> int:
        return sum(self.rows.lengths)

    def padding_share(self) -> float:
        """The share of the packed sequences' max_length slots that stay empty (reported, never computed on)."""
        return 1 - self.tokens / max(1, len(self.packs) * self.max_length)


def rope_index_of(model) -> Callable:
    """The model's own 3-D position function (``get_rope_index`` of Qwen2-VL, Qwen2.5-VL, Qwen3-VL),
    found through whatever wraps it (peft, DDP). It reads the config only, so calling it from the
    collator touches no weights."""
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module.get_rope_index
    raise ValueError("data.packing needs a Qwen-VL model (one with get_rope_index): turn packing off for this model")


def row_positions(rope_index: Callable, item: dict) -> torch.Tensor:
    """(4, n): the row's text positions 0..n-1, then its 3-D mRoPE positions as the model computes them unpacked."""
    ids = item["input_ids"]
    text = torch.arange(ids.shape[0], dtype=ids.dtype)
    kinds = item.get("mm_token_type_ids")
    if kinds is None or not bool(kinds.any()):  # text only: the three axes are the text position
        return text.expand(4, -1)
    extra = {key: item[key] for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if key in item}
    spatial, _ = rope_index(ids[None], mm_token_type_ids=kinds[None], **extra)
    return torch.cat([text[None], spatial[:, 0].to(ids.dtype)])


@dataclass
class PackingCollator:
    """Flattens a batch of packed sequences into one padding-free sequence (see the module's
    docstring); a batch of single rows (evaluation) is padded as ``Collator`` pads it."""

    pad_token_id: int
    rope_index: Callable

    def __call__(self, items: list) -> dict:
        if not items or isinstance(items[0], dict):
            return Collator(self.pad_token_id)(items)
        rows = [row for pack in items for row in pack]
        labels = []
        for row in rows:
            row_labels = row["labels"].clone()
            row_labels[0] = IGNORE_INDEX
            labels.append(row_labels)
        batch = {
            "input_ids": torch.cat([row["input_ids"] for row in rows])[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat([row_positions(self.rope_index, row) for row in rows], dim=1)[:, None],
            # transformers builds the rows' mask from the positions only without a cache: a forward
            # that makes one (use_cache defaults on, even in training) would let rows see each other
            "use_cache": False,
        }
        if all("mm_token_type_ids" in row for row in rows):
            batch["mm_token_type_ids"] = torch.cat([row["mm_token_type_ids"] for row in rows])[None]
        # in sequence order: the model fills the image (video) tokens in the order they appear
        for pixels, keys in (("pixel_values", ("image_grid_thw",)),
                             ("pixel_values_videos", ("video_grid_thw", "second_per_grid_ts"))):
            with_media = [row for row in rows if pixels in row]
            for key in (pixels, *keys):
                if with_media and all(key in row for row in with_media):
                    batch[key] = torch.cat([row[key] for row in with_media])
        return batch
