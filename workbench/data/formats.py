"""Reading dataset files (ms-swift, LLaMA-Factory sharegpt, HF content-part messages) into Samples.

- swift: ``{"messages": [{"role", "content": "...<image>..."}], "images": [paths]}``
- sharegpt: ``conversations`` with ``from``/``value`` (human/gpt/system), or ``messages`` with
  role/content, plus ``images``; a ``dataset_info.json`` beside the file (LLaMA-Factory's)
  supplies the ``columns`` and ``tags`` mappings for that file.
- messages: ``content`` is a list of parts ``{"type": "image", "image": path}`` /
  ``{"type": "text", "text": ...}`` (parts without a path take the next of ``images``).

A whole file that cannot be a dataset raises ``UserError``; a bad row never raises: it
becomes a ``Problem`` naming its row (1-based record number; the line number for JSONL).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from workbench.data.sample import IMAGE_TAG, ROLES, Sample, Turn
from workbench.errors import UserError

FORMATS = ("auto", "swift", "sharegpt", "messages")

# Problem kinds (stable names: the UI groups by them, tests and --json consumers match them).
MALFORMED_JSON = "malformed-json"
WRONG_TYPE = "wrong-type"
MISSING_FIELD = "missing-field"
UNKNOWN_ROLE = "unknown-role"
NO_ASSISTANT = "no-assistant"
EMPTY_CONTENT = "empty-content"
IMAGE_COUNT = "image-count"
IMAGE_MISSING = "image-missing"
IMAGE_UNREADABLE = "image-unreadable"
IMAGE_TOO_LARGE = "image-too-large"
TOO_LONG = "too-long"

# LLaMA-Factory's sharegpt defaults (its dataset_info.json may override any of them).
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                 "assistant_tag": "gpt", "system_tag": "system"}


@dataclass
class Problem:
    row: int  # 1-based record number (line number for JSONL)
    reason: str
    kind: str = "invalid"

    def __post_init__(self):
        self.reason = clip(self.reason)


def clip(text: str, limit: int = 300) -> str:
    """A reason quotes the row's own values (paths, roles): keep a 5 MB value from flooding the screen."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0  # every record in the file, broken ones included
    format: str = "swift"  # the format actually used (after auto-detection)


class RowError(ValueError):
    """A row-level problem raised inside a parser; ``load_samples`` turns it into a Problem."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def read_records(path: str | Path):
    """Yield (row_number, record_or_None, error_or_None) for a JSONL or JSON-list file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Dataset file {path} does not exist: check the path.")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a dataset file: pass the .jsonl or .json file inside it.")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"Dataset file {path} is binary, not JSON text: pass a .jsonl or .json file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"Dataset file {path} is not UTF-8 text: save it as UTF-8 JSON or JSONL.") from None
    if not text.strip():
        raise UserError(f"Dataset file {path} is empty: it needs at least one record.")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except RecursionError:
            raise UserError(f"Dataset file {path} is nested too deeply to be a dataset: write one JSON object per "
                            "line (JSONL), or a JSON list of objects.") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"Dataset file {path} is not valid JSON ({exc}): fix the file or write one record per line (JSONL).") from None
        for i, record in enumerate(records, start=1):
            yield i, record, None
        return
    lines = text.splitlines()
    first = next(line for line in lines if line.strip())
    try:
        json.loads(first)
    except (json.JSONDecodeError, RecursionError):
        try:  # a single pretty-printed object rather than JSONL
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None
        if isinstance(whole, dict):
            if _looks_like_dataset_info(whole):
                raise UserError(f"{path} is a dataset_info.json without a single entry to pick: pass the "
                                "data file it names (the mapping beside it is used).") from None
            yield 1, whole, None
            return
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line), None
        except (json.JSONDecodeError, RecursionError) as exc:
            yield i, None, f"line is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})"


def _looks_like_dataset_info(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, dict) and "file_name" in v for v in obj.values())


def dataset_info_mapping(path: Path) -> dict | None:
    """LLaMA-Factory's entry for ``path`` from a ``dataset_info.json`` in the same folder, if any."""
    info_path = path.parent / "dataset_info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{info_path} is not valid JSON ({exc}): fix it or move it away from the data file.") from None
    if not isinstance(info, dict):
        return None
    for entry in info.values():
        if isinstance(entry, dict) and Path(str(entry.get("file_name", ""))).name == path.name:
            return entry
    return None


def _single_entry_file(info_path: Path) -> Path:
    """The data file of a dataset_info.json that names exactly one file beside it."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{info_path} is not valid JSON ({exc}): fix it, or pass the data file itself.") from None
    entries = [e for e in info.values() if isinstance(e, dict) and e.get("file_name")] if isinstance(info, dict) else []
    files = [info_path.parent / e["file_name"] for e in entries if (info_path.parent / e["file_name"]).is_file()]
    if len(files) != 1:
        raise UserError(f"{info_path} names {len(files)} data files present beside it: pass the data file "
                        "itself (its entry's columns and tags are used).")
    return files[0]


def detect_format(record) -> str:
    """swift, sharegpt or messages from the shape of one record (swift when unsure)."""
    if isinstance(record, dict):
        if "conversations" in record:
            return "sharegpt"
        messages = record.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict) and isinstance(message.get("content"), list):
                    return "messages"
                if isinstance(message, dict) and "from" in message:
                    return "sharegpt"
    return "swift"


# ---------------------------------------------------------------------------- parsers
def _image_list(record: dict, key: str = "images") -> list[str]:
    images = record.get(key)
    if images is None:
        return []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
        raise RowError(MISSING_FIELD, f"'{key}' must be a list of image file paths")
    return images


def _finish(turns: list[Turn], images: list[str], row: int, base: Path) -> Sample:
    if not any(t.role == "assistant" for t in turns):
        raise RowError(NO_ASSISTANT, "no assistant turn to learn from: add the answer as an assistant message")
    tags = sum(t.text.count(IMAGE_TAG) for t in turns)
    if tags != len(images):
        raise RowError(IMAGE_COUNT, f"{tags} <image> tag(s) but {len(images)} image(s): each image needs "
                                    "one <image> tag in the text, in order")
    return Sample(turns=turns, images=[_resolve(str(base), p) for p in images], row=row)


@functools.lru_cache(maxsize=65536)
def _resolve(base: str, image: str) -> str:
    """Relative paths start at the dataset's folder (cached: 100k rows reuse few images)."""
    path = Path(image).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


def _turn(j: int, role, content) -> Turn:
    if role not in ROLES:
        raise RowError(UNKNOWN_ROLE, f"message {j} has unknown role {role!r} (use system, user or assistant)")
    if not isinstance(content, str):
        raise RowError(EMPTY_CONTENT if content is None else WRONG_TYPE,
                       f"message {j} ({role}) has {'no' if content is None else 'non-text'} content")
    if not content.replace(IMAGE_TAG, "").strip() and not (role == "user" and IMAGE_TAG in content):
        raise RowError(EMPTY_CONTENT, f"message {j} ({role}) has empty content")
    return Turn(role, content)


def _message_list(record, key: str):
    if not isinstance(record, dict):
        raise RowError(WRONG_TYPE, f"record is a {type(record).__name__}, expected an object with '{key}'")
    messages = record.get(key)
    if not isinstance(messages, list) or not messages:
        raise RowError(MISSING_FIELD, f"'{key}' is missing or not a non-empty list")
    return messages


def sample_from_swift(record, row: int, base: Path) -> Sample:
    """ms-swift (and sharegpt written with role/content ``messages``)."""
    turns = []
    for j, message in enumerate(_message_list(record, "messages"), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        turns.append(_turn(j, message.get("role"), message.get("content")))
    return _finish(turns, _image_list(record), row, base)


def sample_from_sharegpt(record, row: int, base: Path, mapping: dict | None = None) -> Sample:
    """LLaMA-Factory sharegpt with its column and tag mappings (defaults: from/value, human/gpt)."""
    mapping = mapping or {}
    columns = {**SHAREGPT_COLUMNS, **(mapping.get("columns") or {})}
    tags = {**SHAREGPT_TAGS, **(mapping.get("tags") or {})}
    key = columns["messages"]
    if isinstance(record, dict) and key not in record and "messages" in record and not mapping:
        key, tags = "messages", {**tags, "role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
    turns = []
    system_column = columns.get("system")
    if system_column and isinstance(record, dict) and record.get(system_column):
        turns.append(_turn(0, "system", record[system_column]))
    for j, message in enumerate(_message_list(record, key), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        tag = message.get(tags["role_tag"])
        if tag not in roles:
            raise RowError(UNKNOWN_ROLE, f"message {j} has unknown {tags['role_tag']!r} value {tag!r} "
                                         f"(use {', '.join(repr(r) for r in roles)})")
        turns.append(_turn(j, roles[tag], message.get(tags["content_tag"])))
    return _finish(turns, _image_list(record, columns.get("images") or "images"), row, base)


def sample_from_messages(record, row: int, base: Path) -> Sample:
    """HF chat messages whose content is a list of image/text parts (or a plain string)."""
    spare = iter(_image_list(record) if isinstance(record, dict) else [])
    turns, images = [], []
    for j, message in enumerate(_message_list(record, "messages"), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        content = message.get("content")
        if isinstance(content, list):
            pieces = []
            for k, part in enumerate(content, start=1):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif kind == "image" or (isinstance(part, dict) and "image" in part):
                    path = part.get("image") or part.get("path") or next(spare, None)
                    if not isinstance(path, str) or not path:
                        raise RowError(IMAGE_COUNT, f"message {j} part {k} is an image without a path "
                                                    "(give 'image': path, or list it in 'images')")
                    images.append(path)
                    pieces.append(IMAGE_TAG)
                else:
                    raise RowError(WRONG_TYPE, f"message {j} part {k} is not a text or image part "
                                               "({'type': 'text', 'text': ...} or {'type': 'image', 'image': path})")
            content = "".join(pieces)
        turns.append(_turn(j, message.get("role"), content))
    leftover = sum(1 for _ in spare)
    if leftover:
        raise RowError(IMAGE_COUNT, f"{leftover} image(s) in 'images' have no image part in the messages")
    return _finish(turns, images, row, base)


# ---------------------------------------------------------------------------- loading
def load_samples(path: str | Path, format: str = "auto") -> LoadResult:
    """Every record -> a Sample or a Problem. Raises UserError only for an unusable file."""
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise UserError(f"Dataset format '{format}' is unknown: use auto, swift, sharegpt or messages.")
    result = LoadResult()
    if path.name == "dataset_info.json" and path.is_file():
        path = _single_entry_file(path)
    mapping = dataset_info_mapping(path) if format in ("auto", "sharegpt") and path.exists() else None
    if mapping and mapping.get("formatting", "alpaca") != "sharegpt":
        raise UserError(f"dataset_info.json describes {path.name} as '{mapping.get('formatting', 'alpaca')}' "
                        "formatting; only sharegpt is read: convert the file or set \"formatting\": \"sharegpt\".")
    chosen = "sharegpt" if mapping and format == "auto" else (None if format == "auto" else format)
    base = path.parent
    present: dict[str, bool] = {}  # per load: a file added since is seen next time
    conversation_keys = {"messages", "conversations", (mapping or {}).get("columns", {}).get("messages")}
    shaped = 0  # records that are objects with a conversation key: a dataset, however broken its rows
    for row, record, error in read_records(path):
        result.rows += 1
        if error:
            result.problems.append(Problem(row, error, MALFORMED_JSON))
            continue
        if isinstance(record, dict) and not conversation_keys.isdisjoint(record):
            shaped += 1
        if chosen is None and isinstance(record, dict):
            chosen = detect_format(record)
        try:
            if chosen == "sharegpt":
                sample = sample_from_sharegpt(record, row, base, mapping)
            elif chosen == "messages":
                sample = sample_from_messages(record, row, base)
            else:
                sample = sample_from_swift(record, row, base)
        except RowError as exc:
            result.problems.append(Problem(row, str(exc), exc.kind))
            continue
        missing = [p for p in sample.images if not (present[p] if p in present else present.setdefault(p, os.path.isfile(p)))]
        if missing:
            result.problems.append(Problem(row, f"image file {missing[0]} is missing: fix the path "
                                                "(relative paths start at the dataset's folder)", IMAGE_MISSING))
            continue
        result.samples.append(sample)
    result.format = chosen or "swift"
    if result.rows and not result.samples and all(p.kind == MALFORMED_JSON for p in result.problems):
        raise UserError(f"Dataset file {path} is not JSON or JSONL (no line of it parses as JSON): write one "
                        "JSON object per line, or a JSON list of objects.")
    if result.rows and not result.samples and not shaped:
        raise UserError(f"Dataset file {path} is not a dataset: none of its {result.rows} record(s) is an object "
                        "with a 'messages' or 'conversations' list (ms-swift, sharegpt or HF messages format).")
    return result
