"""What trains: the vision tower, the merger and the language model, each frozen, LoRA or full.

``LoraSettings.parts()`` says which; this module turns that into the model's terms through
the family table (``workbench.models.families``): LoRA target regexes per part, the modules
a fully trained part puts in peft's ``modules_to_save`` (peft saves them in the adapter and
``PeftModel.from_pretrained`` loads them, so the adapter stays plain PEFT), and one optimizer
group per part and decay kind, each with its part's learning rate.
"""

from __future__ import annotations

import re

from workbench.settings import PARTS, LoraSettings, target_modules_for

LABELS = {"vision": "vision tower", "merger": "merger", "language": "language model"}


def _tower(family) -> str:
    return family.visual.split(".")[-1]  # "visual"


def _merger_units(family) -> set[str]:
    return {unit.split(".")[0] for unit in family.vision_units_out}


def part_of(name: str, family) -> str:
    """The part a parameter or module name belongs to; everything outside the tower (lm_head, the
    embeddings) counts with the language model."""
    segments = name.split(".")
    tower = _tower(family)
    if tower not in segments:
        return "language"
    after = segments[segments.index(tower) + 1: segments.index(tower) + 2]
    return "merger" if after and after[0] in _merger_units(family) else "vision"


def explicit(settings: LoraSettings) -> bool:
    """Did the config say what trains (a recipe or a part), or does target_modules alone decide?"""
    return bool(settings.recipe or any(getattr(settings, part) for part in PARTS))


def lora_targets(settings: LoraSettings, family):
    """peft's target_modules: one regex over the parts that take LoRA, or peft's dummy target
    when none does (a config that only trains parts in full)."""
    from peft.utils.constants import DUMMY_TARGET_MODULES

    if not explicit(settings):  # today's behaviour, byte for byte: the preset's or the list's targets
        return target_modules_for(settings.target_modules, family)
    parts, tower = settings.parts(), _tower(family)
    pieces = []
    if parts["language"] == "lora":
        targets = settings.target_modules
        presets = family.target_presets()
        if isinstance(targets, str) and targets not in presets:  # a regex of the user's (the planner's flag)
            pieces.append(targets)
        elif isinstance(targets, str):  # presets that also reach the tower: their language half
            pieces.append(presets["language-attention" if targets == "language-attention" else "language-all-linear"])
        else:
            pieces.append(r"(?:.*\.)?(?:" + "|".join(re.escape(name) for name in targets) + ")")
    if parts["vision"] == "lora":
        pieces.append(rf".*{tower}\.blocks\.\d+\.({family.vision_linears})")
    if parts["merger"] == "lora":
        pieces.append(rf".*{tower}\.({family.merger_linears})")
    return "|".join(f"(?:{piece})" for piece in pieces) if pieces else DUMMY_TARGET_MODULES


def full_modules(model, settings: LoraSettings, family) -> list[str]:
    """Module names (suffixes, as peft matches them) of the parts trained in full.

    Each vision block and deepstack merger is named on its own: peft wraps a module in a
    ``ModulesToSaveWrapper``, and the tower iterates and indexes its block lists."""
    parts, tower_name = settings.parts(), _tower(family)
    tower = model.get_submodule(family.visual)
    names: list[str] = []

    def add(unit: str) -> None:
        if "{i}" in unit:
            listed = getattr(tower, unit.split(".")[0], None) or []
            names.extend(f"{tower_name}.{unit.format(i=i)}" for i in range(len(listed)))
        elif any(True for _ in tower.get_submodule(unit).parameters()):  # rotary tables have none
            names.append(f"{tower_name}.{unit}")

    if parts["vision"] == "full":
        for unit in (*family.vision_units_in, "blocks.{i}"):
            add(unit)
    if parts["merger"] == "full":
        for unit in family.vision_units_out:
            add(unit)
    if parts["language"] == "full":
        names.append(family.language.split(".")[-1])
    return names


def rates(settings: LoraSettings, learning_rate: float) -> dict[str, float]:
    """Each part's learning rate (0 in the settings: the main one)."""
    return {"vision": settings.vision_lr or learning_rate, "merger": settings.merger_lr or learning_rate,
            "language": learning_rate}


def param_groups(model, family, part_rates: dict[str, float], weight_decay: float, decay_names) -> list[dict]:
    """Optimizer groups: per part, the weights that decay and the norms and biases that do not.

    Each group carries its ``part`` (torch keeps extra keys in the optimizer's state), so a
    checkpoint says which rate belongs to which part."""
    decay_names = set(decay_names)
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((part_of(name, family), name in decay_names), []).append(param)
    return [{"params": params, "lr": part_rates[part], "weight_decay": weight_decay if decays else 0.0,
             "part": part}
            for (part, decays), params in sorted(groups.items(), key=lambda kv: (PARTS.index(kv[0][0]), not kv[0][1]))]


def part_optimizer(trainer, model):
    """The optimizer Trainer would build (its class and arguments), over ``param_groups``."""
    from workbench.models.families import family_of

    groups = param_groups(model, family_of(model.config), trainer.part_rates, trainer.args.weight_decay,
                          trainer.get_decay_parameter_names(model))
    optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    return optimizer_cls(groups, **optimizer_kwargs)


def trainable_by_part(model, family) -> dict[str, dict]:
    """{part: {"lora": n, "full": n}} trainable parameter counts (LoRA vs fully trained weights)."""
    counts = {part: {"lora": 0, "full": 0} for part in PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            kind = "lora" if ".lora_" in name else "full"
            counts[part_of(name, family)][kind] += param.numel()
    return counts


def summary(model, family, part_rates: dict[str, float]) -> str:
    """'language model LoRA 12,345 at 0.0001; merger full 6,789 at 0.001' (what the Start message and
    run.yaml say)."""
    said = []
    for part, kinds in trainable_by_part(model, family).items():
        for kind, count in kinds.items():
            if count:
                said.append(f"{LABELS[part]} {'LoRA' if kind == 'lora' else kind} {count:,} at {part_rates[part]:g}")
    return "; ".join(said) or "nothing"


def announce(model, config, config_file=None) -> tuple[dict[str, float], str]:
    """(each part's rate, what trains); with ``config_file``, run.yaml is written again ending in a
    ``# trains: ...`` comment (a comment, so the file still loads as the run's config)."""
    from workbench.models.families import family_of

    part_rates = rates(config.lora, config.training.learning_rate)
    trains = summary(model, family_of(model), part_rates)
    if config_file is not None:
        config.save(config_file)
        with open(config_file, "a", encoding="utf-8") as f:
            f.write(f"# trains: {trains}\n")
    return part_rates, trains


def upcast_full(model) -> None:
    """Fully trained copies train in fp32 (as peft keeps LoRA weights): a bf16 weight loses updates
    smaller than 2^-8 of itself, which is most of them at 1e-5."""
    import torch
    from peft.utils import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for copy in module.modules_to_save.values():
                if any(p.is_floating_point() and p.dtype != torch.float32 for p in copy.parameters()):
                    copy.float()
