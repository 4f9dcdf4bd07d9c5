"""Reading dataset files into Samples.

Foundation version: ms-swift JSONL/JSON (``messages`` + ``images`` with ``<image>`` tags).
Never raises for a bad row: each becomes a ``Problem`` naming its row and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from workbench.data.sample import IMAGE_TAG, ROLES, Sample, Turn
from workbench.errors import UserError


@dataclass
class Problem:
    row: int  # 1-based record number (line number for JSONL)
    reason: str
    kind: str = "invalid"


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0  # every record in the file, broken ones included


def read_records(path: str | Path):
    """Yield (row_number, record_or_None, error_or_None) for a JSONL or JSON-list file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Dataset file {path} does not exist: check the path.")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a dataset file: pass the .jsonl or .json file inside it.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"Dataset file {path} is not UTF-8 text: save it as UTF-8 JSON or JSONL.") from None
    if not text.strip():
        raise UserError(f"Dataset file {path} is empty: it needs at least one record.")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UserError(f"Dataset file {path} is not valid JSON ({exc}): fix the file or write one record per line (JSONL).") from None
        for i, record in enumerate(records, start=1):
            yield i, record, None
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line), None
        except (json.JSONDecodeError, RecursionError) as exc:
            yield i, None, f"line is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})"


def sample_from_swift(record, row: int, base: Path) -> Sample:
    """ms-swift: {"messages": [{"role", "content"}], "images": [paths]}; raises ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, expected an object with 'messages'")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' is missing or not a non-empty list")
    turns = []
    for j, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {j} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {j} has unknown role {role!r} (use system, user or assistant)")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {j} ({role}) has empty or non-text content")
        turns.append(Turn(role, content))
    images = record.get("images") or []
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise ValueError("'images' must be a list of file paths")
    if not any(t.role == "assistant" for t in turns):
        raise ValueError("no assistant turn to learn from")
    tags = sum(t.text.count(IMAGE_TAG) for t in turns)
    if tags != len(images):
        raise ValueError(f"{tags} <image> tag(s) but {len(images)} image(s): each image needs one tag, in order")
    resolved = [str(p if Path(p).is_absolute() else (base / p)) for p in images]
    return Sample(turns=turns, images=resolved, row=row)


def load_samples(path: str | Path, format: str = "auto") -> LoadResult:
    path = Path(path)
    result = LoadResult()
    for row, record, error in read_records(path):
        result.rows += 1
        if error:
            result.problems.append(Problem(row, error, "malformed-json"))
            continue
        try:
            sample = sample_from_swift(record, row, path.parent)
        except ValueError as exc:
            result.problems.append(Problem(row, str(exc)))
            continue
        missing = [p for p in sample.images if not Path(p).is_file()]
        if missing:
            result.problems.append(Problem(row, f"image file {missing[0]} is missing", "image-missing"))
            continue
        result.samples.append(sample)
    return result
