"""Did it help? Base and adapter on the same input, one model in memory.

The base loads once; the adapter is attached with peft and switched off with
``disable_adapter()`` for the base's answer, so both answers come from the same weights
and the same decoding settings.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.data.sample import IMAGE_TAG, Sample, Turn
from workbench.errors import UserError
from workbench.settings import RunConfig

log = logging.getLogger("workbench.inference")


@dataclass
class Decoding:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {self.max_new_tokens}.")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"temperature must be 0 (greedy) or a positive number, got {self.temperature}.")
        if not math.isfinite(self.top_p):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True,
                "temperature": self.temperature, "top_p": self.top_p}


def model_shape(name_or_path: str) -> dict | None:
    """The sizes an adapter depends on, from a local model's config.json (None when not local)."""
    from workbench.models import locate_model

    try:
        folder = locate_model(name_or_path).local_path
        if folder is None:
            return None
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UserError, OSError, json.JSONDecodeError):
        return None
    text = raw.get("text_config") or raw
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    return {k: text.get(k, raw.get(k)) for k in keys}


def check_adapter_base(adapter_dir: str | Path, trained_on: str, base: str) -> None:
    """An adapter only fits the base it was trained on: compare the two models' sizes when both are local."""
    if not trained_on or trained_on == base:
        return
    want, have = model_shape(trained_on), model_shape(base)
    if want and have and want != have:
        diff = ", ".join(f"{k} {want[k]} vs {have[k]}" for k in want if want[k] != have[k])
        raise UserError(f"The adapter in {adapter_dir} was trained on '{trained_on}', which differs from '{base}' "
                        f"({diff}): choose base '{trained_on}' or an adapter trained on '{base}'.")


def adapter_base(adapter_dir: str | Path) -> tuple[str, RunConfig | None]:
    """The base model an adapter was trained on (from its run.yaml or adapter_config.json)."""
    adapter_dir = Path(adapter_dir).expanduser()
    if not adapter_dir.is_dir():
        raise UserError(f"Adapter folder {adapter_dir} does not exist: pass a run folder that holds adapter_config.json.")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_dir} holds no adapter_config.json: pass a finished run's folder or a checkpoint folder.")
    from workbench.run_folder import RunFolder

    folder = RunFolder(adapter_dir)
    if not folder.config_file.is_file():
        folder = RunFolder(adapter_dir.parent)  # a checkpoint inside a run (or a bare adapter: no config)
    run = folder.config()
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{config_file} is not valid JSON: the adapter folder is damaged.") from None
    return (run.model.name_or_path if run else base) or "", run


class Comparer:
    """The base model with one adapter attached; answers with the adapter off and on."""

    def __init__(self, base: str, adapter_dir: str | Path | None = None, config: RunConfig | None = None,
                 quantization: str = "none"):
        from workbench.models import fetch_model
        from workbench.training.loading import load_model, load_processor

        # the base answers unquantised whatever the run trained on: an adapter trained on a
        # 4-bit base (QLoRA) is a plain LoRA adapter, served with the bf16 base; a quantised
        # base only for checking an adapter on the base it was trained on
        self.config = (config or RunConfig()).replace(model={"quantization": quantization})
        self.base = base
        path = str(fetch_model(base))
        self.processor = load_processor(path)
        self.processor.tokenizer.padding_side = "left"
        self.model = load_model(path, self.config)
        self.adapter_dir = None
        if adapter_dir:
            self.attach(adapter_dir)
        self.model.eval()

    def attach(self, adapter_dir: str | Path) -> None:
        from peft import PeftModel

        trained_on, _ = adapter_base(adapter_dir)
        check_adapter_base(adapter_dir, trained_on, self.base)
        if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
            raise UserError(f"{adapter_dir} holds no adapter_model.safetensors: the workbench loads adapters only "
                            "as safetensors (a pickled adapter_model.bin is never unpickled). Save the adapter "
                            "again with safetensors.")
        try:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir))
        except (RuntimeError, ValueError, KeyError) as exc:
            log.exception("adapter load failed")
            raise UserError(f"The adapter in {adapter_dir} does not fit base model '{self.base}' "
                            f"({str(exc).splitlines()[0][:160]}): pick the base it was trained on.") from None
        self.adapter_dir = str(adapter_dir)

    def _inputs(self, sample: Sample):
        from workbench.data.collate import load_image

        text = self.processor.apply_chat_template(sample.prompt_messages(), tokenize=False, add_generation_prompt=True)
        images = [load_image(p) for p in sample.images] or None
        d = self.config.data
        enc = self.processor(text=[text], images=images, return_tensors="pt",
                             size={"shortest_edge": d.min_pixels, "longest_edge": d.max_pixels})
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def answer(self, sample: Sample, use_adapter: bool, decoding: Decoding | None = None) -> dict:
        import contextlib

        import torch

        decoding = decoding or Decoding()
        inputs = self._inputs(sample)
        off = self.model.disable_adapter() if (self.adapter_dir and not use_adapter) else contextlib.nullcontext()
        start = time.perf_counter()
        with torch.inference_mode(), off:
            output = self.model.generate(**inputs, **decoding.generate_kwargs())
        seconds = time.perf_counter() - start
        new = output[0, inputs["input_ids"].shape[1]:]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        return {"text": text, "new_tokens": int(new.shape[0]), "seconds": seconds,
                "tokens_per_s": new.shape[0] / max(seconds, 1e-9)}

    def compare(self, sample: Sample, decoding: Decoding | None = None) -> dict:
        return {"base": self.answer(sample, False, decoding), "adapter": self.answer(sample, True, decoding)}


def prompt_sample(prompt: str, image: str | None = None, system: str | None = None) -> Sample:
    """A one-question Sample (the assistant turn is a placeholder the prompt never includes)."""
    if not prompt or not prompt.strip():
        raise UserError("The prompt is empty: type a question.")
    images = []
    if image:
        if Path(image).is_dir():
            raise UserError(f"{image} is a folder, not an image file: pass one image (.png, .jpg).")
        if not Path(image).is_file():
            raise UserError(f"Image {image} does not exist: check the path.")
        check_image(image)
        images = [str(image)]
        if IMAGE_TAG not in prompt:
            prompt = IMAGE_TAG + prompt
    turns = ([Turn("system", system)] if system else []) + [Turn("user", prompt), Turn("assistant", "-")]
    return Sample(turns=turns, images=images)


def check_image(path: str | Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"Image {path} is not a readable image ({type(exc).__name__}): use a PNG, JPEG or WebP file.") from None


def heldout_samples(path: str | Path | None = None, limit: int = 8) -> list[Sample]:
    """The first ``limit`` usable rows of a dataset file; the demo's held-out rows when no path is given."""
    from workbench.data.formats import load_samples

    if limit <= 0:
        raise UserError(f"The number of held-out rows must be positive, got {limit}.")
    if not path or not str(path).strip():
        from workbench.demo import ensure_demo

        path = ensure_demo().heldout
    samples = load_samples(Path(str(path).strip()).expanduser()).samples[:limit]
    if not samples:
        raise UserError(f"{path} has no usable rows for a held-out check: open it on the Dataset tab to see why.")
    return samples


def normalise(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def heldout_check(comparer: Comparer, samples: list[Sample], decoding: Decoding | None = None) -> dict:
    """Answer each row with base and adapter; exact and normalised match against the expected answer."""
    rows = []
    for sample in samples:
        answers = comparer.compare(sample, decoding)
        expected = sample.answer
        rows.append({
            "row": sample.row, "image": sample.images[0] if sample.images else None,
            "prompt": sample.prompt_messages()[-1]["content"][-1].get("text", "") if sample.prompt_messages() else "",
            "expected": expected, "base": answers["base"]["text"], "adapter": answers["adapter"]["text"],
            "base_match": answers["base"]["text"] == expected, "adapter_match": answers["adapter"]["text"] == expected,
            "base_match_normalised": normalise(answers["base"]["text"]) == normalise(expected),
            "adapter_match_normalised": normalise(answers["adapter"]["text"]) == normalise(expected),
        })
    n = max(len(rows), 1)
    return {
        "rows": rows,
        "base_accuracy": sum(r["base_match"] for r in rows) / n,
        "adapter_accuracy": sum(r["adapter_match"] for r in rows) / n,
        "base_accuracy_normalised": sum(r["base_match_normalised"] for r in rows) / n,
        "adapter_accuracy_normalised": sum(r["adapter_match_normalised"] for r in rows) / n,
    }
