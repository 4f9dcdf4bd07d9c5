"""Parquet files, Arrow files and ``datasets`` folders, read as the records a JSONL line would give.

The Hugging Face Hub keeps image datasets as Parquet (``data/train-00000-of-00002.parquet``),
and ``Dataset.save_to_disk`` writes a folder of Arrow IPC *stream* files (``data-*.arrow``)
with a ``state.json`` and a ``dataset_info.json``. Either holds images as the ``datasets``
Image feature: a ``struct<bytes: binary, path: string>`` cell, alone, in a list, or inside a
message's content part. Each such cell becomes an image reference the rest of the workbench
reads: its bytes written once into a content-addressed cache under the workbench home
(``<home>/datasets/<name>-<hash>/images/<sha256>.<ext>``, the extension from the bytes), or,
with no bytes, its path (relative paths start at the table's folder). Every other value
becomes plain Python (lists, dicts, str, numbers), struct fields that are null dropped: Arrow
gives every element of a list of structs every field, where the JSON line had only its own.

Which reader is chosen depends on the file's first bytes (``PAR1``, ``ARROW1``, the IPC stream's
0xFFFFFFFF continuation marker), never on its name. Rows stream one record batch at a time
(``ParquetFile.iter_batches``, ``RecordBatchStreamReader``), so a table of many GB never sits in
memory: only one row group of it, and the image paths of the rows read so far.

pyarrow, not ``datasets``: the workbench reads tables, it never builds them; ``datasets`` would
add dill, multiprocess, fsspec, xxhash and an on-disk cache of its own, and decode every image
with PIL (this reads only headers).
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path

from workbench.data.problems import IMAGE_UNREADABLE
from workbench.errors import UserError

PARQUET, ARROW_FILE, ARROW_STREAM = "parquet", "arrow file", "arrow stream"
BATCH_ROWS = 256  # rows converted to Python at once: a few MB even when every row holds a photo
MEDIA = ("Image", "Audio", "Video", "Pdf")  # ``datasets`` features stored as struct<bytes, path>
_SPLIT_SHARD = re.compile(r"^(.+?)-\d+-of-\d+\.")  # the Hub's ``<split>-00000-of-00003.parquet``
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class CellError(str):
    """A row's reason (``read_records``' third value) that carries its problem kind."""

    kind = IMAGE_UNREADABLE


class _BadCell(ValueError):
    pass


# ---------------------------------------------------------------------------- what is a table
def _kind(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError:
        return None
    if head[:4] == b"PAR1":
        return PARQUET
    if head == b"ARROW1":
        return ARROW_FILE
    if head[:4] == b"\xff\xff\xff\xff":  # no text file starts so: 0xFF is never a byte of UTF-8
        return ARROW_STREAM
    return None


def _state_files(folder: Path) -> list[Path] | None:
    """The data files ``save_to_disk`` listed in ``state.json``, in its order (None: not such a folder)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files or None


def _shards(folder: Path) -> list[Path]:
    listed = _state_files(folder)
    if listed is not None:
        return listed
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and _kind(p))


def is_table(path) -> bool:
    """A Parquet or Arrow file, a ``save_to_disk`` folder (or DatasetDict folder), or a folder of table shards."""
    path = Path(path)
    try:
        if path.is_dir():
            return (path / "dataset_dict.json").is_file() or bool(_shards(path))
        return path.is_file() and _kind(path) is not None
    except OSError:
        return False


def _checked_shards(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise UserError(f"{path} holds a DatasetDict with the splits {', '.join(splits) or '(none found)'}: pass one "
                        f"split's folder, e.g. {path / (splits[0] if splits else 'train')}.")
    shards = _shards(path)
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"{path}/state.json lists {missing[0].name}, which is not in the folder: copy the whole "
                        "folder that save_to_disk wrote.")
    others = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".jsonl")
                    and p.name not in ("state.json", "dataset_info.json"))
    if others and _state_files(path) is None:
        raise UserError(f"{path} holds table shards ({', '.join(p.name for p in shards[:3])}) and other dataset "
                        f"files ({', '.join(others[:3])}): pass the file to read, or move the shards into a folder "
                        "of their own.")
    splits = sorted({m.group(1) for p in shards if (m := _SPLIT_SHARD.match(p.name))})
    if len(splits) > 1:
        raise UserError(f"{path} holds shards of the splits {', '.join(splits)}: move each split's shards into a "
                        "folder of its own and pass the one to train on.")
    return shards


# ---------------------------------------------------------------------------- images
class _Images:
    """Image cells -> references: bytes into a content-addressed cache, paths against the table's folder."""

    def __init__(self, table: Path, folder: Path):
        from workbench.data.archive import datasets_folder

        where = str(table.resolve())
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in table.stem)[:60] or "table"
        self.root = datasets_folder() / f"{stem}-{hashlib.sha256(where.encode()).hexdigest()[:16]}" / "images"
        self.folder = str(folder)
        self.written: dict[str, str] = {}  # sha256 -> cached path, for images repeated across rows

    def cell(self, value, media: str | None = "Image") -> str | None:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        else:
            data, path = (value, None) if isinstance(value, (bytes, bytearray)) else (None, value)
        if data:
            return self._cached(bytes(data), media, path)
        if not path:
            raise _BadCell("has neither image bytes nor a path: give the image's bytes or its path")
        if "://" in path or os.path.isabs(os.path.expanduser(path)):
            return path
        return os.path.join(self.folder, path)

    def _cached(self, data: bytes, media: str | None, path: str | None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        known = self.written.get(digest)
        if known:
            return known
        if media == "Image":
            extension = _image_extension(data)
        else:  # audio and video are named by the row's key and refused there; kept as their own file
            suffix = os.path.splitext(path or "")[1]
            extension = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,7}", suffix) else ".bin"
        target = self.root / f"{digest}{extension}"
        if not target.is_file():
            # a reader in another thread or process may write the same bytes: each its own partial, one rename wins
            partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                partial.write_bytes(data)
                os.replace(partial, target)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise UserError(f"The images of this table cannot be written to {self.root} ({exc.strerror}): "
                                "free some disk space under the workbench home (WORKBENCH_HOME) or point it "
                                "elsewhere.") from None
        self.written[digest] = str(target)
        return str(target)


def _image_extension(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            kind = image.format or ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _BadCell(f"holds {len(data)} bytes that are not an image PIL can read (no PNG, JPEG, WebP, GIF, BMP or "
                       "TIFF header): replace them with the image file's bytes, or drop the row") from None
    registered = [ext for ext, name in Image.registered_extensions().items() if name == kind]
    return _EXTENSIONS.get(kind) or (registered[0] if registered else ".img")


# ---------------------------------------------------------------------------- Arrow -> Python
def _features(schema, folder: Path | None) -> dict:
    """The ``datasets`` features (JSON) of a table: in its schema metadata, else its folder's dataset_info.json."""
    try:
        meta = (schema.metadata or {}).get(b"huggingface")
        if meta:
            features = json.loads(meta)["info"]["features"]
            return features if isinstance(features, dict) else {}
    except (ValueError, KeyError, TypeError):
        pass
    if folder is not None:
        try:
            info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
            features = info.get("features") if isinstance(info, dict) else None
            return features if isinstance(features, dict) else {}
        except (OSError, ValueError):
            pass
    return {}


def _item(feature):
    if isinstance(feature, list):
        return feature[0] if feature else None
    if isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List", "LargeList"):
        return feature.get("feature")
    return None


def _field(feature, name: str):
    if isinstance(feature, dict) and "_type" not in feature:
        return feature.get(name)
    inner = _item(feature)  # a Sequence of a dict is stored as a struct of lists
    if isinstance(inner, dict) and "_type" not in inner and name in inner:
        return {"_type": "Sequence", "feature": inner[name]}
    return None


def _is_media_struct(t) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(t) or t.num_fields != 2:
        return False
    fields = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return (set(fields) == {"bytes", "path"} and (pa.types.is_binary(fields["bytes"]) or
                                                  pa.types.is_large_binary(fields["bytes"]))
            and (pa.types.is_string(fields["path"]) or pa.types.is_large_string(fields["path"])))


def _converter(t, feature, images: _Images):
    """A function from ``to_pylist``'s value of Arrow type ``t`` to the JSON-like value; None: already JSON-like.

    A bad image raises ``_BadCell``; each level puts its place in front ("entry 2 'image' holds ...")."""
    import pyarrow as pa

    media = feature.get("_type") if isinstance(feature, dict) and feature.get("_type") in MEDIA else None
    binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
    if _is_media_struct(t) or (media and binary):
        kind = media or "Image"  # without features, struct<bytes, path> is how the Hub stores images
        return lambda value: images.cell(value, kind)
    if binary:
        def maybe_image(value):  # image bytes without a feature: a reference; other bytes stay bytes
            try:
                return images.cell(value)
            except _BadCell:
                return value
        return maybe_image
    if pa.types.is_struct(t):
        inner = {t.field(i).name: _converter(t.field(i).type, _field(feature, t.field(i).name), images)
                 for i in range(t.num_fields)}

        def fields(value):
            out = {}
            for key, v in value.items():
                if v is None:
                    continue
                convert = inner.get(key)
                try:
                    out[key] = convert(v) if convert else v
                except _BadCell as exc:
                    raise _BadCell(f"'{key}' {exc}") from None
            return out
        return fields
    if pa.types.is_map(t):
        convert = _converter(t.item_type, None, images)
        return lambda value: {str(k): (convert(v) if convert and v is not None else v) for k, v in value}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or (
            hasattr(pa.types, "is_list_view") and (pa.types.is_list_view(t) or pa.types.is_large_list_view(t))):
        convert = _converter(t.value_type, _item(feature), images)
        if convert is None:
            return None

        def each(value):
            out = []
            for i, v in enumerate(value, start=1):
                try:
                    out.append(convert(v) if v is not None else None)
                except _BadCell as exc:
                    raise _BadCell(f"entry {i} {exc}") from None
            return out
        return each
    if pa.types.is_temporal(t) or pa.types.is_decimal(t):
        return _plain
    return None


def _plain(value):
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


# ---------------------------------------------------------------------------- reading
def _batches(shard: Path):
    """(schema, record batches) of one file, one batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = _kind(shard)
    try:
        if kind == PARQUET:
            with pq.ParquetFile(shard) as parquet:
                yield parquet.schema_arrow, parquet.iter_batches(batch_size=BATCH_ROWS)
            return
        with pa.memory_map(str(shard)) as source:  # pages are read as batches are touched
            if kind == ARROW_FILE:
                reader = pa.ipc.open_file(source)
                yield reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                reader = pa.ipc.open_stream(source)
                yield reader.schema, reader
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{shard} is not a readable {kind or 'table'} file ({str(exc)[:160]}): copy it again "
                        "or write it again with pyarrow or datasets.") from None


def read_table_records(path):
    """Yield (row_number, record_or_None, reason_or_None) for a table file or folder, 1-based over all shards."""
    import pyarrow as pa

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    images = _Images(path, folder)
    row = 0
    for shard in _checked_shards(path):
        for schema, batches in _batches(shard):
            features = _features(schema, path if path.is_dir() else None)
            names = schema.names
            converters = [_converter(field.type, features.get(field.name), images) for field in schema]
            try:
                for batch in batches:
                    for start in range(0, batch.num_rows, BATCH_ROWS):
                        part = batch.slice(start, BATCH_ROWS)
                        columns = [column.to_pylist() for column in part.columns]
                        for values in zip(*columns):
                            row += 1
                            record = {}
                            for name, convert, value in zip(names, converters, values):
                                if value is None:
                                    continue
                                try:
                                    record[name] = convert(value) if convert else value
                                except _BadCell as exc:
                                    record = CellError(f"column '{name}' {exc}")
                                    break
                            if isinstance(record, CellError):
                                yield row, None, record
                            else:
                                yield row, record, None
            except (pa.ArrowException, OSError) as exc:
                raise UserError(f"{shard} could not be read past row {row} ({str(exc)[:160]}): the file is damaged "
                                "or cut short; copy it again.") from None
