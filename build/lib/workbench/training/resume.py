"""Which checkpoint a resume continues from: the newest complete one whose files are whole.

A COMPLETE marker says every file was written; it cannot say a file was not damaged later (a
disk error, a copy cut short, a hand edit). Trainer would then fail deep inside its load with a
message naming neither the checkpoint nor the way out, so each file is read here first: JSON
parses, a safetensors file is as long as its header says, a torch.save file is a whole zip.
A damaged checkpoint is moved aside (``checkpoint-N.damaged``, never deleted) and the run
continues from the one before it, saying both names.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from workbench.errors import UserError
from workbench.run_folder import RunFolder

DAMAGED_SUFFIX = ".damaged"


def damage(checkpoint: Path) -> str | None:
    """What is wrong with ``checkpoint``'s files, in words, or None when every one reads whole."""
    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json is missing"
    try:
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    except OSError as exc:  # moved away by rank 0 while this rank looked
        return f"cannot be listed ({exc.strerror or exc})"
    for path in files:
        problem = _file_damage(path)
        if problem:
            return f"{path.relative_to(checkpoint)} {problem}"
    return None


def _file_damage(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            return _safetensors_damage(path)
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save writes a zip since torch 1.6
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"has a damaged entry ({bad})"
    except (ValueError, UnicodeDecodeError):
        return "is not valid JSON"
    except zipfile.BadZipFile:
        return "is not a whole torch.save file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is truncated"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return "is truncated"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "has an unreadable header"
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__" and isinstance(t, dict)]
    if 8 + header_len + max(ends, default=0) > size:
        return "is truncated"
    return None


def usable_checkpoint(folder: RunFolder, move_aside: bool) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that reads whole, and a sentence per damaged one passed
    over. ``move_aside``: this process writes the run (rank 0), so it renames the damaged ones.
    Every rank reads the same files, so every rank picks the same checkpoint."""
    passed: list[tuple[Path, str]] = []
    chosen = None
    for _, path in reversed(folder.complete_checkpoints()):
        problem = damage(path) if path.is_dir() else "was moved away"
        if problem is None:
            chosen = path
            break
        passed.append((path, problem))
    if passed and chosen is None:
        path, problem = passed[0]
        raise UserError(f"Cannot resume: {path.name} in {folder.path} is damaged ({problem}) and no earlier complete "
                        "checkpoint is whole; nothing was changed. Start a new run in a new --output-dir.")
    notes = []
    for path, problem in passed:
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        if move_aside and path.is_dir():
            n = 1
            while aside.exists():
                n += 1
                aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}-{n}")
            path.rename(aside)
        notes.append(f"{path.name} is damaged ({problem}): continuing from {chosen.name} instead; the damaged "
                     f"checkpoint was kept as {aside.name} (delete it once you no longer need it).")
    return chosen, notes
