"""The loss on trained tokens only: lm_head and cross-entropy where the shifted label is trained.

A vision-language row trains its answer: the image tokens, the prompt and the padding are
masked (-100). The model's own loss still projects every position onto the vocabulary and
upcasts the logits to fp32, 12 bytes x tokens x vocab at the peak on the lm_head device
(3.5 GiB at 2048 tokens and vocab 152064). Here only the N trained positions reach lm_head
and the cross-entropy, in chunks of at most ``chunk_tokens`` (recomputed in backward), so
the loss memory scales with the answer, not the row. Two ways, by placement:

- one process, device_map, DDP: the forward returns the final hidden state instead of
  logits (``logits_to_keep`` with an all-false mask makes lm_head project nothing;
  ``output_hidden_states=-1`` keeps only the last, normed, state), and the trained rows of
  it go through lm_head chunk by chunk: 12 x min(N, chunk) x V bytes at the peak. lm_head
  is called after the forward; under device_map its own hook moves each chunk to its GPU.
- FSDP2: accelerate shards [final norm, lm_head] as one unit, and calling that unit again
  after the forward crashes its backward (torch 2.14, measured on gloo), so lm_head runs
  inside the forward on the trained positions only (``logits_to_keep`` with the trained
  mask, which transformers flattens to (N, V)) and the cross-entropy is chunked: 4 x N x V
  more (the bf16 logits and their gradient). Not used for device_map: the top-level hook
  moves the mask to the first GPU while the hidden states it indexes sit on lm_head's.

The value is the model's: the cross-entropy summed over trained tokens, divided by
Trainer's ``num_items_in_batch`` (the mean when Trainer gives none), so gradient
accumulation and the averaging over DDP/FSDP processes stay Trainer's own (this is
Trainer's ``compute_loss_func`` hook). The forward always runs through the wrapped model,
so DDP's, FSDP2's and accelerate's hooks all see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from workbench.data.collate import IGNORE_INDEX

# Elements of one chunk's logits (tokens x vocab): with 12 bytes each at the loss peak, at
# most 768 MiB per chunk, 441 tokens of Qwen2-VL's vocabulary of 152064.
CHUNK_ELEMENTS = 1 << 26


def chunk_tokens(vocab: int) -> int:
    """Trained tokens whose fp32 logits exist at once."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts (the next token's); the last position predicts nothing."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def _logits_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets.to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum")


def _hidden_loss_sum(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Under mixed precision accelerate hands back the model's outputs in fp32, and this call
    # runs outside the forward's autocast: lm_head computes in its weights' dtype, as in the forward.
    return _logits_loss_sum(lm_head(hidden.to(lm_head.weight.dtype)), targets)


def chunked_loss_sum(function, rows: torch.Tensor, targets: torch.Tensor, chunk: int, *leading) -> torch.Tensor:
    """sum of function(*leading, rows chunk, targets chunk) over chunks of ``chunk`` rows.

    More than one chunk: each is recomputed in backward, so only one chunk's logits exist
    at any time. One chunk: computed once, nothing to gain from recomputing it."""
    if rows.shape[0] <= chunk:
        return function(*leading, rows, targets)
    total = None
    for part_rows, part_targets in zip(rows.split(chunk), targets.split(chunk)):
        part = checkpoint(function, *leading, part_rows, part_targets, use_reentrant=False)
        total = part if total is None else total + part.to(total.device)
    return total


def trained_token_loss_sum(lm_head, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the trained positions, their count) for hidden (B, S, H), labels (B, S)."""
    targets = shifted_labels(labels).to(hidden.device)
    keep = targets != IGNORE_INDEX
    selected, targets = hidden[keep], targets[keep]
    return chunked_loss_sum(_hidden_loss_sum, selected, targets, chunk, lm_head), int(targets.shape[0])


def is_fsdp_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


class TrainedTokenLoss:
    """Trainer's ``compute_loss_func``; ``forward_inputs`` adds what the forward must return for it."""

    def __init__(self, model):
        self.model = model  # the PeftModel: lm_head is looked up per call (LoRA or modules_to_save may wrap it)
        self._in_forward: bool | None = None  # lm_head inside the forward (FSDP2), decided at the first step

    def lm_head_in_forward(self) -> bool:
        if self._in_forward is None:  # the model is sharded by then: Trainer prepares it before the first step
            self._in_forward = is_fsdp_sharded(self.model)
        return self._in_forward

    def forward_inputs(self, inputs: dict) -> dict:
        """The model inputs, asking for logits at the trained positions only (FSDP2) or for none
        and the final hidden state instead."""
        keep = shifted_labels(inputs["labels"]) != IGNORE_INDEX
        if self.lm_head_in_forward():
            return {**inputs, "logits_to_keep": keep}
        return {**inputs, "logits_to_keep": torch.zeros_like(keep), "output_hidden_states": -1}

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if self.lm_head_in_forward():
            targets = shifted_labels(labels)
            targets = targets[targets != IGNORE_INDEX]
            logits = outputs.logits
            total = chunked_loss_sum(_logits_loss_sum, logits, targets, chunk_tokens(logits.shape[-1]))
            count = int(targets.shape[0])
        else:
            lm_head = self.model.get_output_embeddings()
            vocab = getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]
            total, count = trained_token_loss_sum(lm_head, outputs.hidden_states[-1], labels, chunk_tokens(vocab))
        if num_items_in_batch is None:
            return total / count  # cross_entropy's mean: nan when nothing is trained, like the model's loss
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
