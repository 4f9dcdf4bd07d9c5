"""The README model card of an export: what it is, how to load it, and how it was trained."""

from __future__ import annotations

from workbench.export.source import ExportSource

_SETTINGS = (  # (section, field, label) shown in the card's table when the run recorded them
    ("lora", "rank", "LoRA rank"), ("lora", "alpha", "LoRA alpha"), ("lora", "dropout", "LoRA dropout"),
    ("lora", "target_modules", "Target modules"), ("lora", "use_rslora", "rsLoRA"), ("lora", "use_dora", "DoRA"),
    ("lora", "modules_to_save", "Trained in full"), ("training", "learning_rate", "Learning rate"),
    ("training", "lr_scheduler_type", "Schedule"), ("training", "warmup_ratio", "Warm-up ratio"),
    ("training", "per_device_train_batch_size", "Batch size per device"),
    ("training", "gradient_accumulation_steps", "Gradient accumulation"), ("training", "seed", "Seed"),
    ("data", "max_length", "Max length (tokens)"), ("data", "min_pixels", "Min pixels"),
    ("data", "max_pixels", "Max pixels"), ("model", "dtype", "Training dtype"),
)


def model_card(source: ExportSource, merged: bool, dtype: str = "") -> str:
    """``dtype``: the merged weights' dtype (e.g. bfloat16)."""
    from huggingface_hub import ModelCardData

    run = source.run
    tags = ["lora", "qwen2-vl", "workbench"] + (["merged"] if merged else ["peft"])
    data = ModelCardData(base_model=source.base if "/" in source.base and not source.base.startswith("/") else None,
                         library_name="transformers" if merged else "peft", pipeline_tag="image-text-to-text",
                         tags=tags, base_model_relation="merge" if merged else "adapter")
    what = (f"`{source.base}` with a LoRA adapter folded into its weights" if merged
            else f"a LoRA adapter for `{source.base}`")
    lines = ["---", data.to_yaml(), "---", "", f"# {run.name}", "",
             f"This folder holds {what}, exported by the Qwen2-VL LoRA workbench from `{source.adapter_dir}`.",
             ""]
    lines += ["## Training", "", "| | |", "|---|---|"]
    steps = f"{run.step}" + (f" of {run.max_steps}" if run.max_steps else "") if run.step is not None else "unknown"
    lines.append(f"| Steps | {steps} |")
    lines.append(f"| Final training loss | {_number(run.final_loss)} |")
    lines.append(f"| Held-out (eval) loss | {_number(run.eval_loss) if run.eval_loss is not None else 'not measured'} |")
    lines.append(f"| Data file | {run.data_file or 'unknown'} |")
    for section, name, label in _SETTINGS:
        value = run.settings.get(section, {}).get(name)
        if value is not None and value != "" and value != []:
            lines.append(f"| {label} | {_cell(value)} |")
    if merged:
        lines += ["", f"Weights: safetensors, {dtype or 'the base dtype'}."]
    lines += ["", "## Load it", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForImageTextToText, AutoProcessor",
                  "", 'model = AutoModelForImageTextToText.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'processor = AutoProcessor.from_pretrained("PATH/TO/THIS/FOLDER")']
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForImageTextToText, AutoProcessor",
                  "", f'base = AutoModelForImageTextToText.from_pretrained("{source.base}")',
                  'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
                  'processor = AutoProcessor.from_pretrained("PATH/TO/THIS/FOLDER")']
    lines += ["```", ""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _cell(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|")
