"""Where a run writes: a new run's folder, the rules for an existing one, the adapter moved in whole.

Apart from the job so that the settings check and the placements use them without importing
the job (which imports both).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from workbench.errors import UserError
from workbench.paths import runs_root
from workbench.run_folder import RunFolder
from workbench.settings import RunConfig


def new_run_dir(config: RunConfig) -> Path:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(config.model.name_or_path).name or "model")[:40]
    base = runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def prepare_output_dir(config: RunConfig, resume: bool) -> Path:
    """A new run gets a new folder; an existing run is only ever continued (--resume)."""
    if not config.training.output_dir:
        if resume:
            raise UserError("--resume needs --output-dir: the run folder to continue.")
        return new_run_dir(config)
    path = Path(config.training.output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"training.output_dir {path} is a file: choose a folder for the run.")
    if resume:
        if not path.is_dir():
            raise UserError(f"Cannot resume: {path} does not exist. Check --output-dir.")
        if any(path.iterdir()) and not RunFolder(path).started_here():
            raise UserError(f"Cannot resume: {path} holds files but no run this workbench started (no status.json, "
                            "events.log or COMPLETE checkpoint), so nothing there was touched: train into a new "
                            "--output-dir instead.")
        return path
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"training.output_dir {path} already holds files: continue that run with --resume, "
                        "or choose a new output directory (nothing was overwritten).")
    return path


def save_adapter_atomically(model, folder: RunFolder, state_dict: dict | None = None) -> None:
    """Write the adapter beside the run, then move it in: a kill mid-write never leaves a
    damaged adapter_model.safetensors that looks finished. ``state_dict``: weights gathered
    from a sharded model (FSDP2)."""
    staging = folder.staging_dir
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=state_dict)
    folder.publish_adapter(staging)
