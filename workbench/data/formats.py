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
import stat
from dataclasses import dataclass, field
from pathlib import Path

from workbench.data.problems import (  # noqa: F401  (the kinds are part of this module's interface)
    EMPTY_CONTENT, IMAGE_COUNT, IMAGE_MISSING, IMAGE_REFERENCE, IMAGE_TOO_LARGE, IMAGE_UNREACHABLE,
    IMAGE_UNREADABLE, MALFORMED_JSON, MISSING_FIELD, NO_ASSISTANT, TOO_LONG, UNKNOWN_ROLE, WRONG_TYPE,
    BadImage, Problem, clip)
from workbench.data.parsers import (  # noqa: F401  (parsers are part of this module's interface)
    RowError, loose_text, sample_from_messages, sample_from_sharegpt, sample_from_swift)
from workbench.config_rules import DATA_FORMATS
from workbench.data.layouts import ALPACA, CAULDRON, QUERY_RESPONSE, as_swift, layout_of
from workbench.data.reading import read_bounded
from workbench.data.refs import FILE, URL, kind_of, short
from workbench.data.sample import Sample
from workbench.data.tables import is_table, read_table_records
from workbench.errors import UserError

FORMATS = DATA_FORMATS  # the settings' list: auto plus every layout read below


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0  # every record in the file, broken ones included
    format: str = "swift"  # the format actually used (after auto-detection)
    unusable: dict[int, Sample] = field(default_factory=dict)  # parsed rows whose image files are missing
    urls: set[str] = field(default_factory=set)  # every http(s) image, for one parallel download
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # (user, assistant) of rows that did not parse


def read_records(path: str | Path):
    """Yield (row_number, record_or_None, error_or_None) for a JSONL or JSON-list file, or a table."""
    path = Path(path)
    if is_table(path):  # Parquet, Arrow, a save_to_disk folder: by content (workbench.data.tables)
        yield from read_table_records(path)
        return
    if not path.exists():
        raise UserError(f"Dataset file {path} does not exist: check the path.")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a dataset file: pass the .jsonl or .json file inside it.")
    raw = read_bounded(path)  # a regular file of bounded size, read in chunks (/dev/zero: a sentence)
    _refuse_binary(path, raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"Dataset file {path} is not UTF-8 text: save it as UTF-8 JSON or JSONL.") from None
    if not text.strip():
        raise UserError(f"Dataset file {path} is empty: it needs at least one record.")
    stripped = text.lstrip()
    if stripped.startswith("[") and not _jsonl_of_lists(stripped):
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


def _refuse_binary(path: Path, head: bytes) -> None:
    if head[:4] == b"PK\x03\x04":  # what zipfile.is_zipfile finds first, without reading the archive again
        raise UserError(f"Dataset file {path} is a .zip archive: unpack it with `python -m workbench data check "
                        f"{path}` (it prints the dataset file it unpacked) and give that file.")
    if b"\x00" in head[:8192]:
        raise UserError(f"Dataset file {path} is binary, not JSON text: pass a .jsonl or .json file.")


def check_dataset_path(path: str | Path, field: str = "data.train_path") -> None:
    """A look at the start of a dataset before a run is offered: the path is a table or a file that
    starts like JSON. Settings are checked on every change, so this reads one small block; the rows
    are read (and refused with their own sentences) when the run starts."""
    path = Path(path).expanduser()
    if is_table(path):
        return
    if not path.exists():
        raise UserError(f"{field} {path} does not exist: check the path.")
    if path.is_dir():
        raise UserError(f"{field} {path} is a folder, not a dataset file: pass the .jsonl or .json file inside "
                        "it (or a Parquet/Arrow file, or a save_to_disk folder).")
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # never open a FIFO or a device here
            raise UserError(f"{field} {path} is not a regular file: save the data to a file and pass that.")
        with open(path, "rb") as handle:
            head = handle.read(8192)
    except OSError as exc:
        raise UserError(f"{field} {path} cannot be read ({exc.strerror}): check its permissions.") from None
    _refuse_binary(path, head)
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if not text:
        raise UserError(f"{field} {path} is empty: it needs at least one record.")
    if text[0] not in "[{":
        raise UserError(f"{field} {path} is not a dataset: it is not JSON (it starts with {text.splitlines()[0][:30]!r}); "
                        "pass a .jsonl or .json file of records, or a Parquet/Arrow table.")


def _jsonl_of_lists(text: str) -> bool:
    """A file of bare message lists, one per line (Qwen's README writes a dataset so), not one JSON list."""
    first, _, rest = text.partition("\n")
    if not rest.strip():
        return False
    try:
        value = json.loads(first)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(value, list)


def _image_base(path: Path, image_folder) -> Path:
    if not image_folder or not str(image_folder).strip():
        return path if path.is_dir() else path.parent  # a table folder holds its own images
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
    """The layout of one record from its keys: sharegpt, messages, query-response, alpaca, cauldron
    or swift (when unsure)."""
    if isinstance(record, dict):
        if "conversations" in record:
            return "sharegpt"
        if "messages" not in record and layout_of(record):
            return layout_of(record)
        messages = record.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict) and isinstance(message.get("content"), list):
                    return "messages"
                if isinstance(message, dict) and "from" in message:
                    return "sharegpt"
    return "swift"


# ---------------------------------------------------------------------------- loading
def load_samples(path: str | Path, format: str = "auto", image_folder: str | Path | None = None) -> LoadResult:
    """Every record -> a Sample or a Problem. Raises UserError only for an unusable file.

    Relative image paths start at ``image_folder`` when given, else at the file's own folder."""
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise UserError(f"Dataset format '{format}' is unknown: use one of {', '.join(FORMATS)}.")
    result = LoadResult()
    if path.name == "dataset_info.json" and path.is_file():  # LLaMA-Factory's, or the one save_to_disk writes
        path = path.parent if (path.parent / "state.json").is_file() else _single_entry_file(path)
    mapping = dataset_info_mapping(path) if format in ("auto", "sharegpt", ALPACA) and path.exists() else None
    if mapping and mapping.get("formatting", "alpaca") not in ("sharegpt", "alpaca"):
        raise UserError(f"dataset_info.json describes {path.name} as '{mapping.get('formatting')}' formatting; "
                        "sharegpt and alpaca are read: convert the file or fix its \"formatting\".")
    if mapping and format == "auto":  # LLaMA-Factory's own default formatting is alpaca
        chosen = "sharegpt" if mapping.get("formatting") == "sharegpt" else ALPACA
    else:
        chosen = None if format == "auto" else format
    base = _image_base(path, image_folder)
    where = f"the image folder {base}" if image_folder else "the dataset's folder; give the image folder if they live elsewhere"
    present: dict[str, bool] = {}  # per load: a file added since is seen next time
    conversation_keys = {"messages", "conversations", (mapping or {}).get("columns", {}).get("messages"),
                         (mapping or {}).get("columns", {}).get("prompt"), "query", "instruction", "texts"}
    shaped = 0  # records that are objects with a conversation key: a dataset, however broken its rows
    for row, record, error in read_records(path):
        result.rows += 1
        if error:
            result.problems.append(Problem(row, error, getattr(error, "kind", MALFORMED_JSON)))
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
            elif chosen in (QUERY_RESPONSE, ALPACA, CAULDRON):
                if not isinstance(record, dict):
                    raise RowError(WRONG_TYPE, f"record is a {type(record).__name__}, expected an object")
                sample = sample_from_swift(as_swift(record, chosen, mapping), row, base)
            elif chosen == "messages" or _has_parts(record):
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
        result.urls.update(f for video in sample.videos if isinstance(video, list) for f in video if kind_of(f) == URL)
        result.samples.append(sample)
    result.format = chosen or "swift"
    if result.rows and not result.samples and all(p.kind == MALFORMED_JSON for p in result.problems):
        raise UserError(f"Dataset file {path} is not JSON or JSONL (no line of it parses as JSON): write one "
                        "JSON object per line, or a JSON list of objects.")
    if result.rows and not result.samples and not shaped:
        raise UserError(f"Dataset file {path} is not a dataset: none of its {result.rows} record(s) is an object "
                        "with a 'messages' or 'conversations' list, 'query'/'response', 'instruction'/'output' or "
                        "'texts' (the layouts in docs/data-formats.md).")
    return result


def _has_parts(record) -> bool:
    """A swift-looking record whose messages carry content parts (rows of one file may mix both)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    return isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                              for m in messages)
