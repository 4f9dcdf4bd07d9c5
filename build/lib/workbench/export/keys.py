"""Names of weights: the base checkpoint's tensors, the adapter's pieces, and one naming for both.

A Qwen2-VL checkpoint may name its text weights ``model.layers.*`` and its vision tower
``visual.*`` (the hub's checkpoints, and what transformers 5 writes back on save), or
``model.language_model.*`` / ``model.visual.*`` (the module names of transformers 5).
peft names adapter pieces after the modules of the transformers that trained them:
``base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight`` today,
``base_model.model.model.layers.0...`` with older releases. Both sides are brought to the
current module names by the family's ``checkpoint_renames`` (``workbench.models.families``: the
same patterns transformers applies when it loads a checkpoint); the merged output keeps the base
checkpoint's own names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import UserError
from workbench.models.families import Family
from workbench.run_folder import ADAPTER_WEIGHTS

ADAPTER_PREFIX = "base_model.model."
# What peft saves per LoRA module (after the module's name); anything else is a full tensor.
LORA_PIECES = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies, and its shape and safetensors dtype, read from the file's header."""

    file: Path
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors' spelling: F32, BF16, F16, ...

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def read(self):
        """The tensor, copied out of the file; the file is mapped only for this read, so pages
        of a large shard never pile up in the resident set (a mapping kept open would hold them)."""
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            return f.get_tensor(self.name)


def file_header(path: Path) -> list[TensorRef]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            refs = []
            for name in f.keys():
                part = f.get_slice(name)
                refs.append(TensorRef(path, name, tuple(part.get_shape()), part.get_dtype()))
            return refs
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:160]}): "
                        "the download or copy is damaged; fetch it again.") from None


def base_tensors(folder: Path) -> dict[str, TensorRef]:
    """Every tensor of a model folder's safetensors weights (sharded with an index, or one file)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{index} is not a valid safetensors index: the model folder is damaged.") from None
        files = list(dict.fromkeys(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise UserError(f"The base model in {folder} has no safetensors weights (model.safetensors or an index): "
                        "the workbench never unpickles .bin weights; convert the base to safetensors first.")
    refs = {}
    for name in files:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing (listed in the safetensors index): download the base again.")
        refs.update({r.name: r for r in file_header(folder / name)})
    return refs


@dataclass
class LoraModule:
    """One adapted module: its name (current naming), its name in the adapter (what peft's rank and
    alpha patterns were matched against) and its pieces, e.g. 'lora_A.weight'."""

    name: str
    adapter_name: str
    pieces: dict[str, TensorRef] = field(default_factory=dict)


@dataclass
class AdapterTensors:
    lora: dict[str, LoraModule]  # by module name
    # Full tensors by parameter name: modules_to_save, trained biases, the base layer under an embedding
    # LoRA. They replace the base's tensor; a LoRA on the same module is folded into the replacement.
    replaced: dict[str, TensorRef]


def adapter_tensors(adapter_dir: Path, family: Family) -> AdapterTensors:
    lora: dict[str, LoraModule] = {}
    replaced: dict[str, TensorRef] = {}
    for ref in file_header(adapter_dir / ADAPTER_WEIGHTS):
        name = ref.name.removeprefix(ADAPTER_PREFIX)
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p in LORA_PIECES), None)
        if at is not None:
            own = ".".join(parts[:at])
            module = family.module_name(own)
            lora.setdefault(module, LoraModule(module, own)).pieces[".".join(parts[at:])] = ref
        elif parts[-1] in ("weight", "bias") and not any(p.startswith(("lora_", "trainable_tokens")) for p in parts):
            # bias="lora_only"/"all" and embedding layers save the wrapped layer's own tensor as X.base_layer.*
            own = ".".join(p for p in parts if p != "base_layer")
            replaced[family.module_name(own)] = ref
        else:
            raise UserError(f"The adapter in {adapter_dir} holds '{ref.name}', a kind of trained tensor export "
                            "does not merge (trainable tokens or another peft method): export it adapter-only.")
    return AdapterTensors(lora, replaced)


def natural_key(name: str) -> tuple:
    """layers.2 before layers.10, and a module's weight before its bias (a merge writes both from the weight)."""
    module, _, param = name.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split("."))
    return parts, 0 if param == "weight" else 1, param
