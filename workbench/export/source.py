"""What an export reads: the adapter folder of a finished run (or a checkpoint), its base model,
and the run's facts for the model card. Every refusal about the input happens here.

The run folder is read through ``workbench.runs`` / ``RunFolder`` and the base model through
``locate_model`` (which never downloads: a merge needs the base on disk before it starts, and
its disk check comes first).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import UserError
from workbench.export.keys import ADAPTER_WEIGHTS
from workbench.run_folder import PROCESSOR_DIR, RunFolder, checkpoint_step

# Adapter kinds whose update is not W + scale * B @ A of the stored base: PiSSA, OLoRA, CorDA and
# LoftQ start from a changed base weight, aLoRA only acts after its invocation tokens.
_UNMERGEABLE_INIT = ("pissa", "olora", "corda", "loftq")


@dataclass
class RunFacts:
    """What the model card says about the run that trained the adapter."""

    name: str
    step: int | None = None
    max_steps: int | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    data_file: str = ""
    settings: dict = field(default_factory=dict)  # run.yaml as a dict ({} for a bare adapter)


@dataclass
class ExportSource:
    adapter_dir: Path  # holds adapter_config.json + adapter_model.safetensors
    adapter_config: dict
    base: str  # what the exported adapter names as its base: a hub id or an absolute folder
    run: RunFacts
    processor_dir: Path | None  # the processor the run trained with (None: take the base's)


def _run_state(path: Path):
    from workbench.runs import run_info

    return run_info(path)


def resolve_base(name_or_path: str) -> str:
    """What an exported adapter names as its base: a hub id (presets too), else the absolute folder."""
    from workbench.models import locate_model

    source = locate_model(name_or_path)
    return source.hub_id or str(Path(source.local_path).resolve())


def base_folder(base: str) -> Path:
    """The local folder holding the base's config and weights (a hub id: its cached snapshot)."""
    from workbench.models import locate_model

    source = locate_model(base)
    if source.local_path is None:
        raise UserError(f"The base model '{base}' is not on this machine: a merge reads its weights, so download "
                        f"it first (`hf download {source.hub_id}`) or pass --base with its local folder.")
    return Path(source.local_path)


def read_source(adapter: str | Path, base: str | None = None) -> ExportSource:
    """The adapter to export; refuses runs that are training, unfinished or hold no adapter."""
    from workbench.runs import adapter_base

    folder = Path(adapter).expanduser().absolute()
    info = _run_state(folder)
    if info.state == "training":
        raise UserError(f"Run {info.name} is still training: wait for it to finish (or stop it) before exporting.")
    if info.adapter_dir is None:
        raise UserError(f"{folder} holds no adapter (no adapter_config.json, no complete checkpoint): "
                        "pick a finished run or a checkpoint folder.")
    if Path(info.adapter_dir).resolve() != folder.resolve():
        steps = f"step {info.step} of {info.max_steps}" if info.max_steps else f"step {info.step}"
        raise UserError(f"Run {info.name} did not finish (it stopped at {steps} without a final adapter): export "
                        f"its newest complete checkpoint instead (--adapter {info.adapter_dir}), or resume the run "
                        "to finish it.")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{folder} holds no {ADAPTER_WEIGHTS}: the workbench exports adapters saved as "
                        "safetensors only (a pickled adapter_model.bin is never unpickled).")
    trained_on, run_config = adapter_base(folder)
    config = _adapter_config(folder)
    chosen = (base or "").strip() or trained_on or config.get("base_model_name_or_path") or ""
    if not chosen:
        raise UserError(f"The adapter in {folder} does not say which base model it was trained on: pass --base.")
    run = RunFolder(folder)
    if not run.config_file.is_file() and RunFolder(folder.parent).config_file.is_file():
        run = RunFolder(folder.parent)  # a checkpoint inside a run
    processor = next((p for p in (folder / PROCESSOR_DIR, run.processor_dir) if p.is_dir()), None)
    return ExportSource(adapter_dir=folder, adapter_config=config, base=resolve_base(chosen),
                        run=run_facts(folder, run, run_config), processor_dir=processor)


def _adapter_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{folder / 'adapter_config.json'} is not valid JSON: the adapter folder is damaged.") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"The adapter in {folder} is not a LoRA adapter (peft_type "
                        f"{config.get('peft_type') if isinstance(config, dict) else '?'}): export handles LoRA only.")
    return config


def check_mergeable(config: dict, folder: Path) -> None:
    """Refuses adapters whose update is not a LoRA delta on the stored base weights."""
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_UNMERGEABLE_INIT):
        raise UserError(f"The adapter in {folder} was initialised with {init}, which changes the base weights "
                        "themselves: merge it with peft's own conversion for that method, or export it adapter-only.")
    if config.get("alora_invocation_tokens"):
        raise UserError(f"The adapter in {folder} is an activated LoRA (aLoRA), which only acts after its "
                        "invocation tokens and cannot be folded into the weights: export it adapter-only.")
    if config.get("layer_replication") or config.get("target_parameters"):
        raise UserError(f"The adapter in {folder} uses layer_replication or target_parameters, which export does "
                        "not merge: export it adapter-only.")


def run_facts(adapter_dir: Path, run: RunFolder, run_config) -> RunFacts:
    """Steps, losses and settings of the run; for a checkpoint, as they were at its step."""
    step_cap = checkpoint_step(adapter_dir)
    facts = RunFacts(name=run.name)
    if run_config is not None:
        facts.settings = run_config.to_dict()
        facts.max_steps = run_config.training.max_steps or None
        facts.data_file = _data_file(run_config)
    for row in run.metrics():
        step = row.get("step")
        if not isinstance(step, int) or (step_cap is not None and step > step_cap):
            continue
        facts.step = max(facts.step or 0, step)
        for key, attr in (("loss", "final_loss"), ("eval_loss", "eval_loss")):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                setattr(facts, attr, float(value))
    if step_cap is not None:
        facts.step = step_cap
    return facts


def _data_file(run_config) -> str:
    from workbench.demo import is_demo

    train = run_config.data.train_path
    if not train:
        return "the demo's train.jsonl" if is_demo(run_config.model.name_or_path) else ""
    return Path(train).name
