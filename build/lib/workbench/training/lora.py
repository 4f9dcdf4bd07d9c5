"""LoRA on top of the base: settings -> peft.LoraConfig (with peft's own validation)."""

from __future__ import annotations

from workbench.errors import UserError
from workbench.settings import LoraSettings


def lora_config(settings: LoraSettings, family=None, full_modules=()):
    """Build peft's LoraConfig (LoRA targets per part as ``family``'s module regexes, Qwen2-VL's when
    None; ``full_modules``: the fully trained parts' modules); its ValueErrors become UserErrors that
    name the lora field."""
    from peft import LoraConfig

    from workbench.models.families import QWEN2_VL
    from workbench.training.parts import lora_targets

    targets = lora_targets(settings, family or QWEN2_VL)
    modules_to_save = [*settings.modules_to_save, *full_modules]
    try:
        return LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=targets, use_rslora=settings.use_rslora, use_dora=settings.use_dora,
            modules_to_save=modules_to_save or None, task_type="CAUSAL_LM",
        )
    except (ValueError, TypeError) as exc:
        raise UserError(f"LoRA settings rejected by peft: {exc}") from None


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def check_rank(model, config) -> None:
    """A rank above min(in, out) of a targeted layer adds parameters, never capacity: B @ A has at
    most that rank. Refused before peft builds (and allocates) the adapters."""
    from peft.tuners.tuners_utils import check_target_module_exists

    smallest = None
    for name, module in model.named_modules():
        dims = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if not all(isinstance(d, int) for d in dims) or not check_target_module_exists(config, name):
            continue
        if smallest is None or min(dims) < min(smallest[1]):
            smallest = (name, dims)
    if smallest is not None and config.r > min(smallest[1]):
        name, (n_in, n_out) = smallest
        raise UserError(f"lora.rank {config.r} is larger than the smallest layer it targets ({name}: {n_in} in, "
                        f"{n_out} out), where an update can have rank {min(n_in, n_out)} at most: set lora.rank to "
                        f"{min(n_in, n_out)} or less (8 to 64 is usual).")


def apply_lora(model, settings: LoraSettings, gradient_checkpointing: bool):
    """Freeze the base, switch on checkpointing, wrap the targets in LoRA.

    For a 4-bit or 8-bit base this is the preparation for k-bit training (peft's
    ``prepare_model_for_kbit_training``: frozen base, non-reentrant checkpointing, input
    gradients) without its one other step, an fp32 copy of every unquantised parameter:
    that would double the vision tower (0.68B parameters: +1.3 GiB) and the embeddings and
    lm_head (+4.6 GiB on 72B) for stability that bf16, unlike fp16, does not need. peft
    puts bitsandbytes' LoRA layers on the quantised linears and keeps the adapters in fp32.
    """
    from peft import get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        # non-reentrant checkpointing; input grads so frozen embeddings still pass gradients on
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    from workbench.models.families import family_of
    from workbench.training.parts import full_modules, upcast_full

    family = family_of(model)
    config = lora_config(settings, family, full_modules(model, settings, family))
    check_rank(model, config)
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules matched nothing usable in this model ({exc}): pick a preset or list module names that exist.") from None
    upcast_full(model)
    return model
