"""The loss on trained tokens only: lm_head and cross-entropy where the shifted label is trained.

A vision-language row trains its answer: the image tokens, the prompt and the padding are
masked (-100). The model's own loss still projects every position onto the vocabulary and
upcasts the logits to fp32, 12 bytes x tokens x vocab at the peak on the lm_head device
(3.5 GiB at 2048 tokens and vocab 152064). Here the forward returns the final hidden state
instead of logits (``logits_to_keep`` with an all-false mask makes lm_head project nothing;
``output_hidden_states=-1`` keeps only the last, normed, hidden state), and the trained
positions go through lm_head and the cross-entropy in chunks, so the loss peak scales with
the answer tokens, at most one chunk at a time.

The value is the model's: the cross-entropy summed over trained tokens, divided by
Trainer's ``num_items_in_batch`` (or the mean when Trainer gives none), so gradient
accumulation and the averaging over DDP/FSDP processes stay Trainer's own (this is
Trainer's ``compute_loss_func`` hook). The forward still runs through the wrapped model,
so DDP's and FSDP2's hooks and accelerate's device_map hooks all see it; lm_head is called
after the forward returns, which FSDP2 allows because it keeps the root module's
parameters (lm_head, embeddings) gathered until backward, and device_map allows because
lm_head's own hook moves its input to its device.
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
    """Trained tokens whose logits exist at once."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts (the next token's); the last position predicts nothing."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def _chunk_loss_sum(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, targets.to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum")


def trained_token_loss_sum(lm_head, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the trained positions, their count) for hidden (B, S, H) and labels (B, S)."""
    targets = shifted_labels(labels).to(hidden.device)
    keep = targets != IGNORE_INDEX
    selected, targets = hidden[keep], targets[keep]
    count = selected.shape[0]
    if count <= chunk:  # one chunk: nothing to gain from recomputing it in backward
        return _chunk_loss_sum(lm_head, selected, targets), count
    total = None
    for start in range(0, count, chunk):
        # recomputed in backward, so only one chunk's logits exist at any time
        part = checkpoint(_chunk_loss_sum, lm_head, selected[start:start + chunk], targets[start:start + chunk],
                          use_reentrant=False)
        total = part if total is None else total + part.to(total.device)
    return total, count


class TrainedTokenLoss:
    """Trainer's ``compute_loss_func``; ``forward_inputs`` adds what the forward must return for it."""

    def __init__(self, model):
        self.model = model  # the PeftModel: lm_head is looked up per call (LoRA or modules_to_save may wrap it)

    @staticmethod
    def forward_inputs(inputs: dict) -> dict:
        """The model inputs with logits switched off and the final hidden state returned."""
        labels = inputs["labels"]
        return {**inputs, "logits_to_keep": torch.zeros_like(labels, dtype=torch.bool), "output_hidden_states": -1}

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        lm_head = self.model.get_output_embeddings()
        vocab = getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]
        total, count = trained_token_loss_sum(lm_head, outputs.hidden_states[-1], labels, chunk_tokens(vocab))
        if num_items_in_batch is None:
            return total / count  # cross_entropy's mean: nan when nothing is trained, like the model's loss
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
