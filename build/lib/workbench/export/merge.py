"""The streaming merge: base shards in, merged shards out, one output shard in memory at a time.

Every tensor is read alone from its base file (``TensorRef.read``); a LoRA-adapted weight is
merged by peft's own layer for it (``dispatch_default`` builds the same ``lora.Linear``,
``lora.Embedding`` or ``lora.Conv*`` that ``PeftModel`` would, so rsLoRA's alpha/sqrt(r),
DoRA's magnitude renormalisation, rank/alpha patterns and lora_bias follow peft exactly),
in fp32, then cast to the output dtype. Full tensors the adapter trained (modules_to_save,
biases) replace the base's. The output is cut into shards by huggingface_hub's splitter;
each shard is written with safetensors' ``save_file`` and freed before the next is built,
so the peak is about one output shard plus one weight in fp32, whatever the model size.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import UserError
from workbench.export.keys import AdapterTensors, LoraModule, TensorRef, adapter_tensors, base_tensors, natural_key
from workbench.models.families import Family, family_for

DTYPES = ("auto", "bf16", "fp16", "fp32")
DEFAULT_MAX_SHARD = "1GB"
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_OUT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


@dataclass
class OutTensor:
    name: str  # the output key, in the base checkpoint's naming
    source: TensorRef  # the base tensor it starts from
    dtype: str  # torch dtype name of the output
    nbytes: int
    lora: LoraModule | None = None  # set on a LoRA-adapted weight and, with lora_bias, on its bias
    replace: TensorRef | None = None  # a full tensor the adapter saved in place of the base's

    def start(self) -> TensorRef:
        """What the LoRA (if any) is added to."""
        return self.replace or self.source


@dataclass
class MergePlan:
    base_dir: Path
    adapter_dir: Path
    base_config: dict
    tensors: dict[str, OutTensor]  # output order
    shards: dict[str, list[str]]  # file name -> tensor names
    untie: bool
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def largest_shard_bytes(self) -> int:
        return max(sum(self.tensors[n].nbytes for n in names) for names in self.shards.values())


def _tied(config: dict) -> bool:
    return bool(config.get("tie_word_embeddings") or (config.get("text_config") or {}).get("tie_word_embeddings"))


def read_config(base_dir: Path) -> dict:
    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{base_dir / 'config.json'} is missing or not valid JSON: pass the base model's folder.")
    return config


@dataclass
class Match:
    """The adapter's tensors matched to the base's, in one naming; built only when every piece fits."""

    config: dict
    family: Family
    base: dict[str, TensorRef]  # by module naming
    adapter: AdapterTensors
    tied: bool

    def source_of(self, canonical: str) -> TensorRef | None:
        # A tied output embedding is the input embedding, whatever the checkpoint stores for it.
        embed = self.base.get(self.family.input_embedding)
        if self.tied and canonical == self.family.output_embedding and embed is not None:
            return embed
        return self.base.get(canonical)


def match_adapter(base_dir: Path, adapter_dir: Path, base_label: str) -> Match:
    """Refuses an adapter of another base: a module it adapts is missing or has other sizes there.

    Reads file headers only, so it is instant even for a 72B base."""
    config = read_config(base_dir)
    family = family_for(config.get("model_type"), where=str(base_dir))
    base = {family.module_name(name): ref for name, ref in base_tensors(base_dir).items()}
    match = Match(config, family, base, adapter_tensors(adapter_dir, family), _tied(config))
    fit = _Fit(adapter_dir, base_label)
    for name in sorted(match.adapter.lora, key=natural_key):
        fit.lora(match.adapter.lora[name], match.source_of(name + ".weight"))
    for canonical, ref in match.adapter.replaced.items():
        fit.replaced(canonical, ref, match.source_of(canonical))
    fit.raise_if_misfit()
    return match


def plan_merge(base_dir: Path, adapter_dir: Path, base_label: str, dtype: str = "auto",
               max_shard_size: int | str = DEFAULT_MAX_SHARD) -> MergePlan:
    """Every output tensor, its source and its shard."""
    from huggingface_hub import split_state_dict_into_shards_factory

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    match = match_adapter(base_dir, adapter_dir, base_label)
    config, family, adapter = match.config, match.family, match.adapter
    if config.get("quantization_config"):
        raise UserError(f"The base in {base_dir} is a quantised checkpoint "
                        f"({config['quantization_config'].get('quant_method', 'quantised')}): merge into the "
                        "unquantised (bf16) release of that model and pass it with --base.")
    changed = {m + ".weight" for m in adapter.lora} | set(adapter.replaced)
    changed |= {m + ".bias" for m, mod in adapter.lora.items() if "lora_B.bias" in mod.pieces}
    untie = match.tied and bool(changed & {family.input_embedding, family.output_embedding})
    names = {canonical: ref.name for canonical, ref in match.base.items()}
    if untie:
        names.setdefault(family.output_embedding, family.output_embedding)
    tensors = {}
    for canonical, out_name in sorted(names.items(), key=lambda kv: natural_key(kv[1])):
        source = match.source_of(canonical)
        if source.dtype not in _ST_DTYPES:
            raise UserError(f"{source.file} holds {source.name} as {source.dtype}, a type export does not copy.")
        floating = source.dtype.startswith(("F", "BF"))
        out_dtype = _OUT_DTYPES[dtype] if floating and dtype != "auto" else _ST_DTYPES[source.dtype]
        module = canonical.rpartition(".")[0]
        tensors[out_name] = OutTensor(out_name, source, out_dtype, source.numel * torch_dtype(out_dtype).itemsize,
                                      lora=adapter.lora.get(module) if canonical in changed else None,
                                      replace=adapter.replaced.get(canonical))
    try:
        split = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda t: t.nbytes,
                                                     filename_pattern="model{suffix}.safetensors",
                                                     max_shard_size=max_shard_size)
    except ValueError:
        raise UserError(f"--max-shard-size '{max_shard_size}' is not a size: write it like 2GB or 500MB.") from None
    notes = []
    if untie:
        notes.append("The base ties lm_head to the input embeddings and the adapter changes one of them: the merged "
                     "model stores both and sets tie_word_embeddings to false.")
    return MergePlan(base_dir, adapter_dir, config, tensors, split.filename_to_tensors, untie, dtype, notes)


class _Fit:
    """Collects every way the adapter does not fit the base, so one message names the first few."""

    def __init__(self, adapter_dir: Path, base_label: str):
        self.adapter_dir, self.base_label, self.problems = adapter_dir, base_label, []

    def lora(self, module: LoraModule, weight: TensorRef | None) -> None:
        a = module.pieces.get("lora_A.weight") or module.pieces.get("lora_embedding_A")
        b = module.pieces.get("lora_B.weight") or module.pieces.get("lora_embedding_B")
        if a is None or b is None:
            self.problems.append(f"{module.name} has no lora_A/lora_B pair (the adapter file is damaged)")
        elif weight is None:
            self.problems.append(f"{module.name} does not exist in the base")
        elif "lora_embedding_A" in module.pieces:
            if a.shape[1] != weight.shape[0] or b.shape[0] != weight.shape[1]:
                self.problems.append(f"{module.name} is a {a.shape[1]} x {b.shape[0]} embedding in the adapter and "
                                     f"{weight.shape[0]} x {weight.shape[1]} in the base")
        elif len(a.shape) != len(weight.shape) or a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0]:
            self.problems.append(f"{module.name} maps {a.shape[1]} -> {b.shape[0]} features in the adapter and "
                                 f"{weight.shape[1]} -> {weight.shape[0]} in the base")

    def replaced(self, canonical: str, ref: TensorRef, base: TensorRef | None) -> None:
        if base is None:
            self.problems.append(f"{canonical} does not exist in the base")
        elif ref.shape != base.shape:
            self.problems.append(f"{canonical} is {list(ref.shape)} in the adapter and {list(base.shape)} in the base")

    def raise_if_misfit(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
            raise UserError(f"The adapter in {self.adapter_dir} does not fit the base '{self.base_label}': "
                            f"{'; '.join(self.problems[:3])}{more}. Pass the base it was trained on with --base.")


# ---------------------------------------------------------------------------- writing
class Merger:
    """Produces each output tensor of a plan; a LoRA bias comes from its weight's merge."""

    def __init__(self, plan: MergePlan):
        from peft import LoraConfig

        self.plan = plan
        config = LoraConfig.from_pretrained(str(plan.adapter_dir))
        config.init_lora_weights = False  # the saved pieces overwrite them; skips any init work
        self.config = config
        self._merged_bias: dict[str, object] = {}

    def tensor(self, name: str):
        out = self.plan.tensors[name]
        if out.lora is not None and name.endswith(".bias"):
            value = self._merged_bias.pop(name)  # planned right after its weight
        elif out.lora is not None:
            bias_name = name.removesuffix(".weight") + ".bias"
            bias = self.plan.tensors.get(bias_name)
            with_bias = bias is not None and bias.lora is not None
            value, merged_bias = self.merge(out.lora, out.start().read(), bias.start().read() if with_bias else None)
            if with_bias:
                self._merged_bias[bias_name] = merged_bias
        else:
            value = out.start().read()
        return value.to(torch_dtype(out.dtype)).contiguous()

    def merge(self, module: LoraModule, weight, bias=None):
        """W (+ bias) with the module's LoRA folded in, computed in fp32 by peft's layer for it."""
        import torch
        from peft.tuners.lora.layer import dispatch_default
        from peft.utils.other import get_pattern_key

        adapter_name = module.adapter_name
        config = copy.copy(self.config)
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), adapter_name), config.r)
        alpha = config.lora_alpha
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), adapter_name), alpha)
        target = _plain_module(weight.float(), None if bias is None else bias.float(),
                               "lora_embedding_A" in module.pieces)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = dispatch_default(target, "default", config, r=r, lora_alpha=alpha)
        if layer is None:
            raise UserError(f"{module.name} is a {tuple(weight.shape)} weight of a kind peft cannot merge a LoRA into.")
        state = {_layer_key(piece): ref.read().float() for piece, ref in module.pieces.items()}
        # Checked on the small pieces rather than with peft's safe_merge, which copies and scans each
        # whole weight (a third of the merge's time on a 2B model).
        if not all(bool(torch.isfinite(t).all()) for t in state.values()):
            raise UserError(f"The adapter holds non-finite values in {module.name}: export an earlier checkpoint.")
        result = layer.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k.startswith("lora_") and ".default" in k]
        if result.unexpected_keys or missing:
            raise UserError(f"The adapter's pieces for {module.name} do not match a LoRA layer "
                            f"({', '.join(result.unexpected_keys or missing)}): the adapter file is damaged.")
        with torch.no_grad():
            layer.merge(safe_merge=False)
        base = layer.get_base_layer()
        return base.weight.data, (base.bias.data if bias is not None else None)


def _layer_key(piece: str) -> str:
    """An adapter file's piece name -> the name in peft's layer (adapter 'default')."""
    head, _, rest = piece.partition(".")
    if head == "lora_magnitude_vector":
        return "lora_magnitude_vector.default.weight"
    return f"{head}.default.{rest}" if rest else f"{head}.default"


def _plain_module(weight, bias, embedding: bool):
    """The torch module a checkpoint weight belongs to, built around it (no copy)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        if embedding:
            module = nn.Embedding(weight.shape[0], weight.shape[1])
        elif weight.ndim == 2:
            module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        elif weight.ndim in (3, 4, 5):
            conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[weight.ndim]
            module = conv(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=bias is not None)
        else:
            raise UserError(f"A LoRA on a {weight.ndim}-d weight cannot be merged.")
    module.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=False)
    return module


def write_shards(plan: MergePlan, staging: Path, progress=None) -> dict:
    """Each shard built, written and freed in turn; returns the index (weight_map) written."""
    from safetensors.torch import save_file

    from workbench.export.folder import fsync_file

    merger = Merger(plan)
    done, total = 0, plan.total_bytes
    weight_map = {}
    for number, (filename, names) in enumerate(plan.shards.items(), start=1):
        if progress:
            progress(done / total, f"Writing {filename} ({number} of {len(plan.shards)})")
        shard = {name: merger.tensor(name) for name in names}
        save_file(shard, str(staging / filename), metadata={"format": "pt"})
        os.chmod(staging / filename, 0o644)  # safetensors creates it owner-only; a model folder is shared
        fsync_file(staging / filename)
        done += sum(t.nbytes for t in (plan.tensors[n] for n in names))
        weight_map.update(dict.fromkeys(names, filename))
        del shard
        gc.collect()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if len(plan.shards) > 1:
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def merged_config(plan: MergePlan) -> dict:
    """The base's config.json with the output dtype, and untied embeddings when the merge split them."""
    config = copy.deepcopy(plan.base_config)
    if plan.dtype != "auto":
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = _OUT_DTYPES[plan.dtype]
    if plan.untie:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict) and "tie_word_embeddings" in config["text_config"]:
            config["text_config"]["tie_word_embeddings"] = False
    return config


