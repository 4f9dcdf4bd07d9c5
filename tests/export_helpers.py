"""Helpers for the export tests: held-out inputs, plain-library loading, random adapters, renamed checkpoints."""

import json
import shutil
from pathlib import Path

import torch

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja")


def heldout_inputs(processor, samples) -> list[dict]:
    """Each held-out row as the processor encodes it for generation (image included)."""
    from PIL import Image

    encoded = []
    for sample in samples:
        text = processor.apply_chat_template(sample.prompt_messages(), tokenize=False, add_generation_prompt=True)
        images = [Image.open(p).convert("RGB") for p in sample.images] or None
        encoded.append(dict(processor(text=[text], images=images, return_tensors="pt")))
    return encoded


def load_plain(folder, dtype=torch.float32):
    """A merged folder through transformers alone (no workbench code)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype).eval()


def load_with_adapter(base, adapter):
    """Base + adapter through peft alone: the reference a merge must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def logits(model, inputs: list[dict]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**row).logits.float() for row in inputs]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def greedy(model, inputs: list[dict], tokens: int = 8) -> list[list[int]]:
    with torch.no_grad():
        return [model.generate(**row, max_new_tokens=tokens, do_sample=False)[0, row["input_ids"].shape[1]:].tolist()
                for row in inputs]


def copy_processor(src: Path, dst: Path) -> None:
    for name in PROCESSOR_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def random_adapter(base: Path, folder: Path, seed: int = 0, **lora) -> Path:
    """A LoRA adapter with random non-zero updates (B, DoRA magnitudes and saved modules all moved)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad and ("lora_" in name or "modules_to_save" in name or name.endswith("bias")):
                param.add_(torch.randn_like(param) * 0.05 * (param.abs().mean() + 0.1))
    peft_model.save_pretrained(str(folder))
    return folder


def rewrite_keys(src: Path, dst: Path, rename, files=("model.safetensors",)) -> Path:
    """A copy of a model or adapter folder whose safetensors keys went through ``rename``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for name in files:
        tensors = load_file(str(src / name))
        save_file({rename(k): v for k, v in tensors.items()}, str(dst / name), metadata={"format": "pt"})
    return dst


def set_config(folder: Path, **values) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config, indent=2))
