"""The workbench's runs, newest first, for the Training and Inference tabs and the CLI.

Each run is read through ``RunFolder`` (its files only), so the listing is cheap enough to
refresh on every tab visit, and a run trained by another process shows up the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import UserError
from workbench.paths import runs_root
from workbench.run_folder import RunFolder, live_runs

if TYPE_CHECKING:
    from workbench.settings import RunConfig


@dataclass
class RunInfo:
    path: str
    name: str
    state: str  # training | finished | stopped | failed | interrupted | empty
    base: str  # the base model from run.yaml ("" when unknown)
    step: int  # last logged step
    max_steps: int
    final_loss: float | None
    adapter_dir: str | None  # the folder to load: the run's final adapter, else its newest complete checkpoint
    resumable: bool  # stopped early with a complete checkpoint to continue from
    message: str  # how it ended, in the job's words ("" when it never said)
    modified: float
    best_checkpoint: str | None = None  # the checkpoint folder with the best eval score, when kept
    best_score: float | None = None

    def label(self) -> str:
        loss = f"loss {self.final_loss:.3f}" if self.final_loss is not None else "no loss yet"
        steps = f"step {self.step}/{self.max_steps}" if self.max_steps > 0 else f"step {self.step}"
        return f"{self.name} · {self.state} · {steps} · {loss}"

    def to_dict(self) -> dict:
        return asdict(self)


def run_info(folder: str | Path) -> RunInfo:
    """What one run folder (or a bare adapter folder) holds."""
    run = RunFolder(folder)
    if run.path.is_file():
        raise UserError(f"{run.path} is a file: pass the folder that holds adapter_config.json (a run or checkpoint folder).")
    if not run.exists():
        raise UserError(f"Run folder {run.path} does not exist: pick a run from the list or paste an adapter folder.")
    base, max_steps = run.config_summary()
    if not base and not run.config_file.is_file() and RunFolder(run.path.parent).config_file.is_file():
        base = RunFolder(run.path.parent).config_summary()[0]  # a checkpoint: its run's base
    step, loss = 0, None
    for row in run.metrics():
        step = int(row.get("step") or step)
        if isinstance(row.get("loss"), (int, float)):
            loss = float(row["loss"])
    status = run.status()
    max_steps = int(status.get("max_steps") or 0) or max_steps
    adapter = run.adapter_dir()
    best = run.path / str(status.get("best_checkpoint") or "")
    best_kept = bool(status.get("best_checkpoint")) and (best / "adapter_config.json").is_file()
    score = status.get("best_score")
    return RunInfo(path=str(run.path), name=run.name, state=run.state(), base=base, step=step,
                   max_steps=max_steps, final_loss=loss, adapter_dir=str(adapter) if adapter else None,
                   resumable=run.resumable(), message=str(status.get("message") or ""),
                   modified=run.path.stat().st_mtime, best_checkpoint=str(best) if best_kept else None,
                   best_score=float(score) if best_kept and isinstance(score, (int, float)) else None)


def run_choices(runs: list[RunInfo]) -> list[tuple[str, str]]:
    """(label, folder) per run, each followed by its best checkpoint (by eval score) when it kept one:
    what the Inference and Export tabs offer ("export the best")."""
    choices = []
    for r in runs:
        choices.append((r.label(), r.path))
        if r.best_checkpoint and r.best_checkpoint != r.adapter_dir:
            score = f" · eval score {r.best_score:.3f}" if r.best_score is not None else ""
            choices.append((f"{r.name} · best: {Path(r.best_checkpoint).name}{score}", r.best_checkpoint))
    return choices


def list_runs(root: str | Path | None = None, extra: list[str | Path] = ()) -> list[RunInfo]:
    """Runs under the workbench's runs folder, live runs anywhere, and ``extra`` folders, newest first.

    Folders that hold neither a run.yaml nor an adapter are skipped.
    """
    root = Path(root) if root else runs_root()
    folders = [RunFolder(p) for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    folders += live_runs() + [RunFolder(p) for p in extra if Path(p).expanduser().is_dir()]
    seen, runs = set(), []
    for folder in folders:
        if folder in seen or not folder.is_run():
            continue
        seen.add(folder)
        runs.append(run_info(folder.path))
    return sorted(runs, key=lambda r: r.modified, reverse=True)


def usable_adapter(folder: str | Path) -> str:
    """The adapter folder to load for a run folder or an adapter folder; a clear error when there is none."""
    info = run_info(folder)
    if info.state == "training":
        raise UserError(f"Run {info.name} is still training: wait for it to finish or stop it on the Training tab.")
    if info.adapter_dir is None:
        raise UserError(f"{folder} holds no adapter (no adapter_config.json, no complete checkpoint): "
                        "pick a finished run or a checkpoint folder.")
    return info.adapter_dir


def headless_command(config_path: str = "run.yaml", output_dir: str = "", resume: bool = False) -> str:
    """The shell command that runs a saved config without the app (shown by the LoRA tab)."""
    import shlex

    parts = ["python", "-m", "workbench", "train", shlex.quote(str(config_path))]
    if resume and output_dir:
        parts += ["--output-dir", shlex.quote(str(output_dir)), "--resume"]
    return " ".join(parts)


def adapter_base(adapter_dir: str | Path) -> tuple[str, RunConfig | None]:
    """The base model an adapter was trained on (from its run.yaml or adapter_config.json)."""
    adapter_dir = Path(adapter_dir).expanduser()
    if not adapter_dir.is_dir():
        raise UserError(f"Adapter folder {adapter_dir} does not exist: pass a run folder that holds adapter_config.json.")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_dir} holds no adapter_config.json: pass a finished run's folder or a checkpoint folder.")
    folder = RunFolder(adapter_dir)
    if not folder.config_file.is_file():
        folder = RunFolder(adapter_dir.parent)  # a checkpoint inside a run (or a bare adapter: no config)
    run = folder.config()
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{config_file} is not valid JSON: the adapter folder is damaged.") from None
    return (run.model.name_or_path if run else base) or "", run
