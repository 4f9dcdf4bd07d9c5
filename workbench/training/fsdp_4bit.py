"""FSDP2 over a 4-bit (nf4) base: the checks around sharding bitsandbytes' packed weights.

FSDP2 shards a packed 4-bit weight like any float parameter (its storage is the model's
dtype, ``loading.quantization_config``) and bitsandbytes finds the quantisation state again on
the module after each all-gather. Two things can still go wrong without an error, so a run
checks them when training begins (docs/qlora-fsdp.md):

- accelerate leaves a 4-bit weight it cannot shard whole on every GPU (logged);
- the all-gather must give back the packed bytes unchanged: bitsandbytes issue #1945 reports
  FSDP2 on CUDA rewriting bf16 NaN bit patterns inside them, which silently changes the weights.
  One weight's bytes are fingerprinted before sharding and compared after an all-gather.
"""

from __future__ import annotations

import hashlib

from workbench.errors import UserError


def linear_4bit_modules(model) -> list[tuple[str, object]]:
    from bitsandbytes.nn import Linear4bit

    return [(name, m) for name, m in model.named_modules() if isinstance(m, Linear4bit)]


def sharded_4bit_weights(model) -> tuple[int, int]:
    """(sharded, all) of the model's bitsandbytes 4-bit weights: FSDP2 holds a sharded one as a DTensor."""
    from torch.distributed.tensor import DTensor

    weights = [m.weight for _, m in linear_4bit_modules(model)]
    return sum(isinstance(w, DTensor) for w in weights), len(weights)


def _digest(weight) -> str:
    import torch

    # a copy: a numpy view would pin the storage, which FSDP2 must free and resize when it reshards
    return hashlib.sha256(weight.detach().to("cpu", copy=True).view(torch.uint8).numpy()).hexdigest()


def fingerprint(model) -> tuple[str, str] | None:
    """(module name, sha256 of its packed bytes) of the first 4-bit weight; None without one."""
    found = linear_4bit_modules(model)
    if not found:
        return None
    name, module = found[0]
    return name, _digest(module.weight)


def check_fingerprint(model, print_: tuple[str, str] | None) -> None:
    """After sharding: gather the fingerprinted weight (its FSDP2 unit; a collective, every rank
    calls it) and compare its bytes with those before sharding."""
    if print_ is None:
        return
    from torch.distributed.fsdp import FSDPModule

    name, digest = print_
    parts = name.split(".")
    unit = next((model.get_submodule(".".join(parts[:end])) for end in range(len(parts), -1, -1)
                 if isinstance(model.get_submodule(".".join(parts[:end])), FSDPModule)), None)
    if unit is not None:
        unit.unshard()
    try:
        same = _digest(model.get_submodule(name).weight) == digest
    finally:
        if unit is not None:
            unit.reshard()
    if not same:
        raise UserError(f"FSDP2 changed the packed 4-bit weights of {name} when it gathered them (bitsandbytes "
                        "issue #1945), so training would run on wrong weights: train this nf4 base with strategy "
                        "ddp or device_map, or fsdp with model.quantization none.")
