"""Ship it: an adapter ready for serving, or a merged model written in about one shard of memory.

``plan_export`` makes every decision and every refusal (the run, the base, the output folder,
the disk) and writes nothing; ``run_export`` writes the plan into a hidden staging folder
beside --out and moves it in whole at the end.

- Adapter only: adapter_config.json (naming the base by hub id or absolute folder),
  adapter_model.safetensors as trained, the processor files, and a README model card.
- Merged: the base's config and generation config, safetensors shards (+ index) with every
  LoRA update folded into its weight (``workbench.export.merge``), processor, chat template, card.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import UserError
from workbench.export.card import model_card
from workbench.export.folder import (OutFilled, check_disk, check_out_folder, copy_files, human, new_staging,
                                     out_folder, publish)
from workbench.export.keys import ADAPTER_WEIGHTS
from workbench.export.merge import (DEFAULT_MAX_SHARD, DTYPES, MergePlan, match_adapter, merged_config,
                                    plan_merge, read_config, write_shards)
from workbench.export.source import ExportSource, base_folder, check_mergeable, read_source
from workbench.models.families import FAMILIES
from workbench.run_folder import RunFolder

log = logging.getLogger("workbench.export")
# A model folder's processor and tokenizer files, taken from the base when the run saved none.
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja")

# Files the export writes itself: a processor folder's copy of one must never replace ours.
WRITTEN_HERE = ("config.json", "README.md", "adapter_config.json", "model.safetensors.index.json", "workbench-export.json")
# What an export is, for the workbench itself (an earlier export of the same run, the Export tab):
# never read back from the model card's prose.
MANIFEST = "workbench-export.json"


@dataclass
class ExportPlan:
    source: ExportSource
    out: Path
    merge: bool
    dtype: str
    copies: list[Path]  # files copied as they are
    bytes_needed: int
    bytes_free: int
    merge_plan: MergePlan | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = "merged model" if self.merge else "adapter"
        lines = [f"Export the {what} of {self.source.adapter_dir} (base {self.source.base}) to {self.out}.",
                 f"Writes {human(self.bytes_needed)}; {human(self.bytes_free)} free on that disk."]
        if self.merge_plan is not None:
            p = self.merge_plan
            lines.append(f"{len(p.tensors)} tensors in {len(p.shards)} shard(s), dtype "
                         f"{self.dtype if self.dtype != 'auto' else 'as the base'}; largest shard "
                         f"{human(p.largest_shard_bytes)} (the merge holds about one shard in memory).")
        return "\n".join(lines + self.notes)

    def to_dict(self) -> dict:
        return {"adapter_dir": str(self.source.adapter_dir), "base": self.source.base, "out": str(self.out),
                "merge": self.merge, "dtype": self.dtype, "bytes_needed": self.bytes_needed,
                "bytes_free": self.bytes_free, "notes": self.notes,
                "shards": len(self.merge_plan.shards) if self.merge_plan else 0,
                "largest_shard_bytes": self.merge_plan.largest_shard_bytes if self.merge_plan else 0}


def plan_export(adapter: str | Path, out: str | Path, merge: bool = False, dtype: str = "auto",
                base: str | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD) -> ExportPlan:
    """All the checks, nothing written: the run, the base, the output folder, then the disk."""
    if not str(out or "").strip():
        raise UserError("No output folder given (--out): name a new or empty folder.")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    if dtype != "auto" and not merge:
        raise UserError("--dtype applies to a merged export: add --merge (an adapter export keeps the adapter as trained).")
    source = read_source(adapter, base)
    given = Path(str(out).strip()).expanduser().absolute()
    out = out_folder(str(out).strip())
    check_outside_source(out, source)
    check_out_folder(out)
    if merge:
        check_mergeable(source.adapter_config, source.adapter_dir)
        folder = base_folder(source.base)
        merge_plan = plan_merge(folder, source.adapter_dir, source.base, dtype, max_shard_size)
        extras = [folder / "generation_config.json"] if (folder / "generation_config.json").is_file() else []
        copies = extras + processor_files(source, folder)
        needed = merge_plan.total_bytes + _size(copies)
        notes = list(merge_plan.notes)
    else:
        folder = _local_base(source.base)
        if folder is not None and read_config(folder).get("model_type") in FAMILIES:
            match_adapter(folder, source.adapter_dir, source.base)
        merge_plan = None
        copies = [source.adapter_dir / ADAPTER_WEIGHTS] + processor_files(source, folder)
        needed = _size(copies)
        notes = [] if source.processor_dir or folder else [
            "No processor files: the run saved none and the base is not on this machine; load the processor "
            "from the base."]
    if out != given:
        notes.append(f"--out {given} leads (through a link) to {out}: the export is written there.")
    if not merge and touches_vision(source.adapter_dir):
        notes.append(VISION_NOTE)
    free = check_disk(out, needed)
    return ExportPlan(source, out, merge, dtype, copies, needed, free, merge_plan, notes)


VISION_NOTE = ("This adapter changes the vision tower or the merger: vLLM applies LoRA to the language model only "
               "(vllm #32541, #23796) and would silently serve the base's vision side. To serve it with vLLM, "
               "export the merged model (--merge, 'Merge into the base'), which carries every part.")


def touches_vision(adapter_dir: Path) -> bool:
    """Does the adapter hold tensors of the vision tower or merger (vision LoRA, a fully trained merger)?"""
    from workbench.export.keys import file_header

    return any(".visual." in ref.name for ref in file_header(adapter_dir / ADAPTER_WEIGHTS))


def run_export(plan: ExportPlan, progress=None) -> Path:
    """Write the plan; ``progress(fraction, message)`` is called as it goes. Returns the folder."""
    check_out_folder(plan.out)
    check_disk(plan.out, plan.bytes_needed)  # again: the disk may have filled since the plan
    staging = new_staging(plan.out)
    try:
        dtype = ""
        if plan.merge:
            write_shards(plan.merge_plan, staging, progress)
            config = merged_config(plan.merge_plan)
            dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
            _write_json(staging / "config.json", config)
        else:
            _write_json(staging / "adapter_config.json", {**plan.source.adapter_config,
                                                          "base_model_name_or_path": plan.source.base,
                                                          "inference_mode": True})
        if progress:
            progress(0.99, "Copying the processor files and writing the model card")
        copy_files(plan.copies, staging)
        (staging / "README.md").write_text(model_card(plan.source, plan.merge, dtype), encoding="utf-8")
        _write_json(staging / MANIFEST, {"kind": "merged" if plan.merge else "adapter",
                                         "adapter": str(plan.source.adapter_dir), "base": plan.source.base,
                                         "dtype": dtype, "files": sorted(p.name for p in staging.iterdir())})
        publish(staging, plan.out)
    except OutFilled:
        raise  # the finished export stays in staging, where the sentence points
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        fault = _fault_message(exc, plan.out)
        if fault:
            raise UserError(fault) from None
        raise
    log.info("exported %s to %s", plan.source.adapter_dir, plan.out)
    if progress:
        progress(1.0, f"Done: {plan.out}")
    return plan.out


def export(adapter: str | Path, out: str | Path, merge: bool = False, dtype: str = "auto", base: str | None = None,
           max_shard_size: int | str = DEFAULT_MAX_SHARD, progress=None) -> Path:
    return run_export(plan_export(adapter, out, merge, dtype, base, max_shard_size), progress)


def check_outside_source(out: Path, source: ExportSource) -> None:
    """An export inside the folder it reads would be listed (and later exported) as part of it."""
    adapter = source.adapter_dir.resolve()
    sources = [adapter] + ([adapter.parent] if RunFolder(adapter.parent).is_run() else [])
    for folder in sources:
        if out == folder or folder in out.parents:
            raise UserError(f"The output folder (--out) {out} is inside {folder}, the run the export reads: choose "
                            "a folder outside it.")


def _fault_message(exc: BaseException, out: Path) -> str | None:
    """One sentence for faults of the machine rather than the code (nothing was written to --out)."""
    if isinstance(exc, FileNotFoundError):
        return (f"A file the export was reading disappeared ({exc.filename or exc}); nothing was written to {out}. "
                "Put it back (or pick a checkpoint that still exists) and export again.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"The disk holding {out} filled up during the export; nothing was written there. Free some space and export again."
    return None


def processor_files(source: ExportSource, base_dir: Path | None) -> list[Path]:
    """The processor the run trained with; else the base's processor and tokenizer files."""
    if source.processor_dir is not None:
        return sorted(p for p in source.processor_dir.iterdir()
                      if p.is_file() and p.name not in WRITTEN_HERE and p.suffix not in (".safetensors", ".bin"))
    if base_dir is None:
        return []
    return [base_dir / name for name in PROCESSOR_FILES if (base_dir / name).is_file()]


def _local_base(base: str) -> Path | None:
    try:
        return base_folder(base)
    except UserError:
        return None  # an adapter export names a hub id it need not have on disk


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of an export folder the workbench wrote, else None (not one, or unreadable)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and {"kind", "adapter", "base"} <= set(manifest) else None


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


__all__ = ["DTYPES", "DEFAULT_MAX_SHARD", "MANIFEST", "ExportPlan", "export", "plan_export", "read_manifest",
           "run_export"]
