"""The workbench's runs: what each run folder holds, newest first, for the Inference tab and CLI.

A run folder is what ``TrainingJob`` writes: ``run.yaml``, ``metrics.jsonl``, the adapter
(``adapter_config.json`` + weights) once training ends, and ``checkpoint-N`` folders. The
listing reads only those files, so it is cheap enough to refresh on every tab visit.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.paths import runs_root

ADAPTER_FILE = "adapter_config.json"
# Same layout as workbench.training.checkpoints, read here without importing transformers
# (the training package pulls it in), so listing runs stays instant in the CLI.
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_COMPLETE = "COMPLETE"


@dataclass
class RunInfo:
    path: str
    name: str
    state: str  # training | finished | interrupted | empty
    base: str  # the base model from run.yaml ("" when unknown)
    step: int  # last logged step
    max_steps: int
    final_loss: float | None
    adapter_dir: str | None  # the folder to load: the run's final adapter, else its newest complete checkpoint
    modified: float

    def label(self) -> str:
        loss = f"loss {self.final_loss:.3f}" if self.final_loss is not None else "no loss yet"
        steps = f"step {self.step}/{self.max_steps}" if self.max_steps > 0 else f"step {self.step}"
        return f"{self.name} · {self.state} · {steps} · {loss}"

    def to_dict(self) -> dict:
        return asdict(self)


def _last_metrics(path: Path) -> tuple[int, float | None]:
    """The last logged step and the last training loss in ``metrics.jsonl`` (torn lines skipped)."""
    step, loss = 0, None
    if not path.is_file():
        return step, loss
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        step = int(row.get("step") or step)
        if isinstance(row.get("loss"), (int, float)):
            loss = float(row["loss"])
    return step, loss


def _run_yaml(folder: Path) -> tuple[str, int]:
    import yaml

    try:
        raw = yaml.safe_load((folder / "run.yaml").read_text(encoding="utf-8")) or {}
        return str(raw.get("model", {}).get("name_or_path") or ""), int(raw.get("training", {}).get("max_steps") or 0)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return "", 0


def _newest_adapter_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name)) and (p / _COMPLETE).is_file() and (p / ADAPTER_FILE).is_file()]
    return max(found)[1] if found else None


def _running_dir() -> Path | None:
    job_module = sys.modules.get("workbench.training.job")  # not imported: nothing trains in this process
    job = job_module.current_job() if job_module else None
    return Path(job.output_dir).resolve() if job is not None and job.running else None


def run_info(folder: str | Path) -> RunInfo:
    """What one run folder (or a bare adapter folder) holds."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise UserError(f"{folder} is a file: pass the folder that holds adapter_config.json (a run or checkpoint folder).")
    if not folder.is_dir():
        raise UserError(f"Run folder {folder} does not exist: pick a run from the list or paste an adapter folder.")
    base, max_steps = _run_yaml(folder)
    step, loss = _last_metrics(folder / "metrics.jsonl")
    if (folder / ADAPTER_FILE).is_file():
        adapter = folder
    else:
        adapter = _newest_adapter_checkpoint(folder)
    if _running_dir() == folder.resolve():
        state = "training"
    elif adapter == folder:
        state = "finished"
    elif adapter is not None:
        state = "interrupted"
    else:
        state = "empty"
    return RunInfo(path=str(folder), name=folder.name, state=state, base=base, step=step, max_steps=max_steps,
                   final_loss=loss, adapter_dir=str(adapter) if adapter else None,
                   modified=folder.stat().st_mtime)


def list_runs(root: str | Path | None = None, extra: list[str | Path] = ()) -> list[RunInfo]:
    """Runs under the workbench's runs folder (plus ``extra`` folders), newest first.

    Folders that hold neither a run.yaml nor an adapter are skipped.
    """
    root = Path(root) if root else runs_root()
    folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    folders += [Path(p).expanduser() for p in extra if Path(p).expanduser().is_dir()]
    seen, runs = set(), []
    for folder in folders:
        key = folder.resolve()
        if key in seen or not ((folder / "run.yaml").is_file() or (folder / ADAPTER_FILE).is_file()):
            continue
        seen.add(key)
        runs.append(run_info(folder))
    return sorted(runs, key=lambda r: r.modified, reverse=True)


def usable_adapter(folder: str | Path) -> str:
    """The adapter folder to load for a run folder or an adapter folder; a clear error when there is none."""
    info = run_info(folder)
    if info.state == "training":
        raise UserError(f"Run {info.name} is still training: wait for it to finish or stop it on the Training tab.")
    if info.adapter_dir is None:
        raise UserError(f"{folder} holds no adapter (no {ADAPTER_FILE}, no complete checkpoint): "
                        "pick a finished run or a checkpoint folder.")
    return info.adapter_dir
