"""Loading a base model and its processor for training or inference, on the planned devices."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from workbench.errors import UserError
from workbench.models.processors import load_processor  # noqa: F401  (training loads it here)
from workbench.settings import RunConfig

log = logging.getLogger("workbench.training")


def pick_dtype(name: str):
    import torch

    if name == "fp32":
        return torch.float32
    if name == "fp16":
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_device_map(config: RunConfig):
    """The configured map, else the planner's map for the detected GPUs, else all on CPU."""
    import torch

    if config.model.device_map:
        return config.model.device_map
    if not torch.cuda.is_available():
        return {"": "cpu"}
    from dataclasses import replace

    from workbench.hardware import detect_gpus, usable
    from workbench.planner import PlanRequest, plan_memory

    request = replace(PlanRequest.from_run_config(config, usable(detect_gpus())), strategy="device_map", nodes=1)
    plan = plan_memory(request)
    if not plan.fits:
        log.warning("planner predicts out-of-memory; loading with its map anyway")
    return plan.device_map


# Kept in the model's dtype under quantisation: the vision tower (its activations, not its
# weights, dominate its memory, and quantising it costs accuracy on every image token) and
# lm_head (bitsandbytes' own default skip: the logits stay exact). Embeddings are not linears.
UNQUANTIZED_MODULES = ("model.visual", "lm_head")


def quantization_config(kind: str, compute_dtype):
    """bitsandbytes settings for ``model.quantization``: None for 'none'.

    nf4 is QLoRA's recipe: 4-bit NormalFloat, the absmax constants themselves quantised
    (double quantisation: 0.516 instead of 0.563 bytes per weight), matmuls in the compute
    dtype (bf16 on GPUs). The packed weights are stored in the compute dtype so FSDP can
    shard them together with the unquantised parameters."""
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype,
                                  llm_int8_skip_modules=list(UNQUANTIZED_MODULES))
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(UNQUANTIZED_MODULES))
    raise UserError(f"model.quantization '{kind}' is not one of none, nf4, int8.")


def load_model(path: str, config: RunConfig, device_map=None):
    """The base in ``config.model.dtype`` through its family's model class (chosen by its
    config.json's model_type), its language-model linears quantised as
    ``config.model.quantization`` says (inference passes a config with 'none': an adapter
    trained on a 4-bit base is a plain adapter for the unquantised one)."""
    from workbench.models import load_model_config
    from workbench.models.families import family_of

    model_class = family_of(load_model_config(path)).transformers_class("model_class")
    dtype = pick_dtype(config.model.dtype)
    device_map = device_map if device_map is not None else pick_device_map(config)
    quantization = quantization_config(config.model.quantization, dtype)
    log.info("loading %s dtype=%s quantization=%s device_map=%s", path, dtype, config.model.quantization, device_map)
    try:
        # safetensors only: never unpickle weights from a folder we did not write
        model = model_class.from_pretrained(
            path, dtype=dtype, device_map=device_map, use_safetensors=True, quantization_config=quantization)
    except OSError as exc:
        raise UserError(f"Could not load model '{path}' ({str(exc).splitlines()[0]}): pass a local Qwen-VL model folder with safetensors weights, or 'demo'.") from None
    return model


TINY_MODEL_PARAMETERS = 50_000_000


@contextmanager
def tiny_model_threads(model):
    """One CPU thread while a tiny model on the CPU (the demo) trains or answers, and the process's
    own count again after: the app process runs other work (and later, larger models) too.

    Its matrices are so small that each op's cost is the OpenMP hand-off between threads;
    when another process keeps a core busy, every op waits for a descheduled thread. On
    the 2-core CI machine with one busy core, 5 demo steps took 7.4 s on 2 threads and
    0.15 s on 1 (docs/DESIGN.md).
    """
    import torch

    before = torch.get_num_threads()
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and sum(p.numel() for p in model.parameters()) < TINY_MODEL_PARAMETERS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
