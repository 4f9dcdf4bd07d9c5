"""Reading dataset files (ms-swift, LLaMA-Factory sharegpt, chat content-part messages) into Samples.

- swift: ``{"messages": [{"role", "content": "...<image>..."}], "images": [refs]}``
- sharegpt: ``conversations`` with ``from``/``value`` (human/gpt/system), or ``messages`` with
  role/content, plus ``images``; a ``dataset_info.json`` beside the file (LLaMA-Factory's)
  supplies the ``columns`` and ``tags`` mappings for that file.
- messages: ``content`` is a list of text and image parts (Qwen/HF ``{"type": "image", "image":
  ref}``, OpenAI ``image_url``, Anthropic ``source``; parts without a reference take the next of
  ``images``); a record may also be the bare list of messages.

An image reference is a path, a ``file://`` URI, a data URI or an http(s) URL (``workbench.data.refs``);
``images`` entries may be any of them, or a part/dict carrying one. docs/data-formats.md lists every form.

A whole file that cannot be a dataset raises ``UserError``; a bad row never raises: it
becomes a ``Problem`` naming its row (1-based record number; the line number for JSONL).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from workbench.data.problems import (  # noqa: F401  (the kinds are part of this module's interface)
    EMPTY_CONTENT, IMAGE_COUNT, IMAGE_MISSING, IMAGE_REFERENCE, IMAGE_TOO_LARGE, IMAGE_UNREACHABLE,
    IMAGE_UNREADABLE, MALFORMED_JSON, MISSING_FIELD, NO_ASSISTANT, TOO_LONG, UNKNOWN_ROLE, WRONG_TYPE,
    BadImage, Problem, clip)
from workbench.data.refs import FILE, URL, is_image_part, kind_of, normalise, part_reference, short
from workbench.data.sample import IMAGE_TAG, ROLES, Sample, Turn
from workbench.errors import UserError

FORMATS = ("auto", "swift", "sharegpt", "messages")

# LLaMA-Factory's sharegpt defaults (its dataset_info.json may override any of them).
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                 "assistant_tag": "gpt", "system_tag": "system"}


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0  # every record in the file, broken ones included
    format: str = "swift"  # the format actually used (after auto-detection)
    unusable: dict[int, Sample] = field(default_factory=dict)  # parsed rows whose image files are missing
    urls: set[str] = field(default_factory=set)  # every http(s) image, for one parallel download
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # (user, assistant) of rows that did not parse


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


def _image_base(path: Path, image_folder) -> Path:
    if not image_folder or not str(image_folder).strip():
        return path.parent
    folder = Path(str(image_folder).strip()).expanduser()
    if not folder.is_dir():
        raise UserError(f"Image folder {folder} is not a folder: give the folder that relative image paths start at "
                        "(or leave it empty for the dataset file's own folder).")
    return folder.resolve()


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
def _image_list(record: dict, key: str = "images") -> list:
    """The record's ``images`` entries: reference strings, or parts/dicts that carry one."""
    images = record.get(key)
    if images is None:
        return []
    if isinstance(images, (str, dict)):
        images = [images]
    if not isinstance(images, list):
        raise RowError(MISSING_FIELD, f"'{key}' must be a list of images (paths, URLs or data URIs)")
    out = []
    for i, entry in enumerate(images, start=1):
        try:
            ref = part_reference(entry)
        except BadImage as exc:
            raise RowError(exc.kind, f"'{key}' entry {i}: {exc}") from None
        if not isinstance(ref, str) or not ref:
            raise RowError(MISSING_FIELD, f"'{key}' entry {i} is not an image reference: give a path, an http(s) "
                                          "URL or a data URI (or {'path': ...} / {'url': ...})")
        out.append(ref)
    return out


def _finish(turns: list[Turn], images: list[str], row: int, base: Path) -> Sample:
    if not any(t.role == "assistant" for t in turns):
        raise RowError(NO_ASSISTANT, "no assistant turn to learn from: add the answer as an assistant message")
    tags = sum(t.text.count(IMAGE_TAG) for t in turns)
    if tags != len(images):
        raise RowError(IMAGE_COUNT, f"{tags} <image> tag(s) but {len(images)} image(s): each image needs "
                                    "one <image> tag in the text, in order")
    folder = str(base)
    try:
        resolved = [normalise(p, folder) for p in images]
    except BadImage as exc:
        raise RowError(exc.kind, str(exc)) from None
    return Sample(turns=turns, images=resolved, row=row)


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
    """Chat messages whose content is a list of parts (or a plain string): HF/Qwen, OpenAI, Anthropic."""
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
                if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                    if IMAGE_TAG in part["text"]:
                        raise RowError(IMAGE_COUNT, f"message {j} part {k}: its text contains {IMAGE_TAG}, which "
                                                    "marks an image here; give images as image parts and reword the "
                                                    "text")
                    pieces.append(part["text"])
                elif is_image_part(part):
                    try:
                        ref = part_reference(part) or next(spare, None)
                    except BadImage as exc:
                        raise RowError(exc.kind, f"message {j} part {k}: {exc}") from None
                    if not isinstance(ref, str) or not ref:
                        raise RowError(IMAGE_COUNT, f"message {j} part {k} is an image without a reference "
                                                    "(give 'image': path, URL or data URI, or list it in 'images')")
                    images.append(ref)
                    pieces.append(IMAGE_TAG)
                else:
                    raise RowError(WRONG_TYPE, f"message {j} part {k} is not a text or image part "
                                               "({'type': 'text', 'text': ...}, {'type': 'image', 'image': ...} or "
                                               "{'type': 'image_url', 'image_url': {'url': ...}})")
            content = "".join(pieces)
        elif isinstance(content, str):  # "<image>" tags in plain text take images from 'images', in order
            for _ in range(content.count(IMAGE_TAG)):
                ref = next(spare, None)
                if ref is None:
                    raise RowError(IMAGE_COUNT, f"message {j} has more <image> tags than 'images' has images")
                images.append(ref)
        turns.append(_turn(j, message.get("role"), content))
    leftover = sum(1 for _ in spare)
    if leftover:
        raise RowError(IMAGE_COUNT, f"{leftover} image(s) in 'images' have no image part in the messages")
    return _finish(turns, images, row, base)


def loose_text(record) -> tuple[str, str]:
    """First user and assistant text of a record that did not parse, read as far as it goes (for display)."""
    if isinstance(record, list):
        record = {"messages": record}
    if not isinstance(record, dict):
        return "", ""
    messages = next((record[k] for k in ("messages", "conversations") if isinstance(record.get(k), list)), [])
    found = {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = {"human": "user", "gpt": "assistant"}.get(message.get("from"), message.get("role"))
        content = message.get("content", message.get("value"))
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and role in ("user", "assistant"):
            found.setdefault(role, content)
    return found.get("user", ""), found.get("assistant", "")


# ---------------------------------------------------------------------------- loading
def load_samples(path: str | Path, format: str = "auto", image_folder: str | Path | None = None) -> LoadResult:
    """Every record -> a Sample or a Problem. Raises UserError only for an unusable file.

    Relative image paths start at ``image_folder`` when given, else at the file's own folder."""
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
    base = _image_base(path, image_folder)
    where = f"the image folder {base}" if image_folder else "the dataset's folder; give the image folder if they live elsewhere"
    present: dict[str, bool] = {}  # per load: a file added since is seen next time
    conversation_keys = {"messages", "conversations", (mapping or {}).get("columns", {}).get("messages")}
    shaped = 0  # records that are objects with a conversation key: a dataset, however broken its rows
    for row, record, error in read_records(path):
        result.rows += 1
        if error:
            result.problems.append(Problem(row, error, MALFORMED_JSON))
            continue
        if isinstance(record, list) and record and all(isinstance(m, dict) for m in record):
            record = {"messages": record}  # a bare message list, as Qwen's README writes a dataset
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
            result.texts[row] = loose_text(record)
            continue
        missing = None
        for image in sample.images:
            found = present.get(image)
            if found is None:  # data URIs and URLs are read by the check, not here
                kind = kind_of(image)
                found = present[image] = kind != FILE or os.path.isfile(image)
                if kind == URL:
                    result.urls.add(image)
            if not found:
                missing = image
                break
        if missing:
            result.problems.append(Problem(row, f"image file {short(missing)} is missing: fix the path (relative "
                                                f"paths start at {where})", IMAGE_MISSING))
            result.unusable[row] = sample
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
