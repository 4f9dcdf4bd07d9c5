"""A dataset and its images as one .zip: extracted once under the workbench home.

An uploaded .jsonl lands alone in Gradio's temporary folder, where its relative image paths
name nothing; a zip keeps the file and its images together. The archive is unpacked into
``<home>/datasets/<name>-<sha256 prefix>/`` (the same zip twice: the same folder, unpacked
once), so the dataset file it holds has a lasting path that training can use later.
Nothing is overwritten: a folder is written under a temporary name and renamed when complete.

Limits against zip bombs (a 1 MB zip can declare 1 GiB of zeros): the total unpacked size,
the number of entries, and each large entry's compression ratio, checked on the sizes the zip
declares before anything is written, and again on the bytes actually written (declared sizes
can lie).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from workbench.errors import UserError

MAX_UNPACKED_BYTES = 50 * 2**30  # a zip declaring more is refused before anything is written
MAX_MEMBERS = 1_000_000
# Text compresses about 10:1 and images hardly at all; 1000:1 is a run of one byte repeated.
MAX_RATIO = 200
RATIO_FROM_BYTES = 2**20  # smaller entries may compress as they like: they cannot fill a disk
DATA_SUFFIXES = (".jsonl", ".json")
COMPLETE = ".unpacked"


def datasets_folder() -> Path:
    from workbench.paths import home

    return home() / "datasets"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _safe_members(archive: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise UserError(f"{name} holds {len(members)} entries, more than {MAX_MEMBERS}: split the dataset.")
    total = 0
    for member in members:
        parts = PurePosixPath(member.filename.replace("\\", "/")).parts
        if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise UserError(f"{name} holds an entry outside its own folder ({member.filename[:120]}): "
                            "zip the dataset folder itself, with relative names.")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UserError(f"{name} holds a symbolic link ({member.filename[:120]}): zip the files it points to.")
        if member.file_size > RATIO_FROM_BYTES and member.file_size > MAX_RATIO * max(member.compress_size, 1):
            raise UserError(f"{name} holds {member.filename[:120]}, which unpacks to {member.file_size / 2**20:.0f} "
                            f"MiB from {member.compress_size / 2**10:.0f} KiB (more than {MAX_RATIO}:1): that is a zip "
                            "bomb, not a dataset; zip the real files, or give the dataset's path on this machine.")
        total += member.file_size
    if total > MAX_UNPACKED_BYTES:
        raise UserError(f"{name} unpacks to {total / 2**30:.1f} GiB, more than {MAX_UNPACKED_BYTES // 2**30} GiB: "
                        "give the dataset's path on this machine instead of uploading it.")
    free = shutil.disk_usage(datasets_folder()).free
    if total > free:
        raise UserError(f"{name} unpacks to {total / 2**30:.1f} GiB but the workbench home has "
                        f"{free / 2**30:.1f} GiB free: free some space or give the dataset's path instead.")
    return members


def _extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], folder: Path, name: str) -> None:
    """Write each member under ``folder``, counting the bytes as they come: never more than declared."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for member in members:
        parts = [p for p in PurePosixPath(member.filename.replace("\\", "/")).parts if p not in ("", ".")]
        if not parts:
            continue
        target = folder.joinpath(*parts)
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with archive.open(member) as source, open(target, "xb") as out:
            while block := source.read(1 << 20):
                written += len(block)
                total += len(block)
                if written > member.file_size or total > MAX_UNPACKED_BYTES:
                    raise UserError(f"{name} holds {member.filename[:120]}, which unpacks to more than the "
                                    f"{member.file_size} bytes it declares: the zip is damaged or crafted; zip "
                                    "the dataset again.")
                out.write(block)


def unpack_dataset(zip_path: str | Path, display_name: str | None = None) -> Path:
    """The dataset file inside a .zip (extracted under the workbench home once). ``UserError`` when unusable."""
    zip_path = Path(zip_path)
    name = display_name or zip_path.name
    if not zipfile.is_zipfile(zip_path):
        raise UserError(f"{name} is not a zip archive: upload a .zip holding the dataset file and its images, "
                        "or the .jsonl / .json file itself.")
    datasets_folder().mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(name).stem)[:60] or "dataset"
    target = datasets_folder() / f"{stem}-{_digest(zip_path)}"
    if not (target / COMPLETE).is_file():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                _extract(archive, _safe_members(archive, name), partial, name)
        except UserError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"{name} could not be unpacked ({exc}): zip it again.") from None
        (partial / COMPLETE).write_text(str(zip_path.name), encoding="utf-8")
        if target.exists():  # another unpack of the same zip won the race, or a stale leftover
            shutil.rmtree(partial, ignore_errors=True)
        else:
            os.replace(partial, target)
    return dataset_file_in(target, name)


def dataset_file_in(folder: Path, name: str) -> Path:
    """The one dataset file in an unpacked folder (a dataset_info.json naming one file counts as it)."""
    candidates = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                        and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts))
    info = [p for p in candidates if p.name == "dataset_info.json"]
    data = [p for p in candidates if p.name != "dataset_info.json"]
    if len(info) == 1:
        return info[0]  # load_samples picks its single entry and uses its column mapping
    if len(data) == 1:
        return data[0]
    if not data:
        raise UserError(f"{name} holds no .jsonl or .json dataset file: zip the dataset file together with its images.")
    shown = ", ".join(str(p.relative_to(folder)) for p in data[:5])
    raise UserError(f"{name} holds {len(data)} dataset files ({shown}{', ...' if len(data) > 5 else ''}): zip one "
                    f"dataset file with its images, or type the path of the one you want (unpacked in {folder}).")
