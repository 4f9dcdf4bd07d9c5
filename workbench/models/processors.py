"""A model's processor (tokenizer, image and video processors, chat template): the one loader that
training, inference and the Dataset tab's row view share."""

from __future__ import annotations

from workbench.errors import UserError


def load_processor(path: str, local_only: bool = False):
    """The processor of the model folder or hub id ``path``, padding on the right (the collator's
    labels assume it). ``local_only``: never download (the row view of a model not fetched yet)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=local_only)
    except OSError as exc:
        raise UserError(f"Could not load a processor for model '{path}' ({str(exc).splitlines()[0]}): pass a local "
                        "Qwen-VL model folder, a preset already downloaded, or 'demo'.") from None
    processor.tokenizer.padding_side = "right"
    return processor
