"""Image references: every way a row (or a caller of the core) names an image.

Accepted references, as strings in ``Sample.images`` (PIL images only from callers of the core):

- a local path: relative (to the dataset's folder, or to the image folder given), ``~/...``,
  or absolute; after parsing it is absolute;
- a ``file://`` URI (``file:///abs/path``, ``file://localhost/abs/path``, percent-encoded);
  parsing turns it into its local path; a URI naming another host is a problem;
- a data URI ``data:[<media type>][;base64],<data>`` (``data:image;base64,...`` as in Qwen's
  README; ``data:;base64,...``); kept as written and decoded where it is read;
- an ``http(s)://`` URL, kept as written; ``workbench.data.downloads`` fetches it once into a
  cache under the workbench home;
- a ``PIL.Image.Image`` in memory.

Content-part shapes that carry a reference (``part_reference``): ``{"type": "image", "image":
ref}`` (also ``url`` / ``path`` / ``base64`` keys, as transformers' chat templates take them),
OpenAI ``{"type": "image_url", "image_url": {"url": ref}}`` and ``{"image_url": ref}``, and
Anthropic ``{"type": "image", "source": {"type": "base64", "media_type", "data"} | {"type":
"url", "url"}}``.

Why not qwen-vl-utils' ``fetch_image``: it decodes and resizes every image (a check needs only
the header of each), fetches URLs with ``requests.get`` without a timeout, size limit or cache
(so once per epoch, and hanging when offline), strips ``file://`` without looking at the host,
reads only ``data:image...`` prefixes, and fails with bare exceptions quoting the whole
reference. Its ``to_rgb`` is used for pixels (``workbench.data.images.load_image``), so
training sees the same RGB conversion as Qwen's own inference pipeline.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from workbench.data.problems import IMAGE_REFERENCE, IMAGE_UNREADABLE, BadImage, clip

FILE, DATA, URL, MEMORY = "file", "data URI", "URL", "in memory"
# Two letters at least: "C:\\img.png" is a Windows drive, not a scheme.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")
_SHOWN = 48  # characters of a data URI that identify it in a message


def kind_of(ref) -> str:
    """FILE, DATA, URL or MEMORY for a reference that has been through ``normalise``."""
    if not isinstance(ref, str):
        return MEMORY
    head = ref[:8].lower()
    if head.startswith("data:"):
        return DATA
    if head.startswith(("http://", "https://")):
        return URL
    return FILE


def short(ref) -> str:
    """The reference as a message may quote it: never a whole data URI."""
    if not isinstance(ref, str):
        size = getattr(ref, "size", None)
        return f"in-memory image {size[0]}x{size[1]}" if size else "in-memory image"
    if kind_of(ref) == DATA:
        if len(ref) <= _SHOWN:
            return ref
        return f"{ref[:_SHOWN]}... ({_kilobytes(ref)} data URI)"
    return clip(ref, 200)


def data_summary(ref: str) -> str:
    """'image/png, 2.1 kB' for a data URI."""
    media = ref[5:ref.find(",")].split(";")[0].strip() if "," in ref else ""
    return f"{media or 'no media type'}, {_kilobytes(ref)}"


def _kilobytes(ref: str) -> str:
    payload = len(ref) - ref.find(",") - 1
    size = payload * 3 // 4 if ";base64," in ref[:ref.find(",") + 1].lower() else payload
    return f"{size / 1000:.1f} kB" if size >= 100 else f"{size} bytes"


# ---------------------------------------------------------------------------- parsing
def normalise(ref: str, base: str) -> str:
    """The reference as ``Sample.images`` keeps it: local paths absolute, file URIs as paths.

    Raises ``BadImage`` for references that can never be read here (another host's file URI,
    an unknown scheme, a data URI without data). Cached per (reference, base) except data
    URIs, which are kept as written (caching them would pin every inline image in memory).
    """
    if ref[:5].lower() == "data:":
        _data_header(ref)
        return ref
    return _normalise(ref, base)


@functools.lru_cache(maxsize=65536)
def _normalise(ref: str, base: str) -> str:
    match = _SCHEME.match(ref)
    if match:
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            if not urlsplit(ref).hostname:
                raise BadImage(IMAGE_REFERENCE, f"image URL {short(ref)} names no host: write "
                                                f"{scheme}://host/path/image.jpg")
            return ref
        if scheme == "file":
            ref = file_uri_path(ref)
        elif ref[match.end():match.end() + 2] == "//":
            raise BadImage(IMAGE_REFERENCE, f"image {short(ref)} uses the {scheme}:// scheme, which the workbench "
                                            "does not read: download the image and give its local path (or an "
                                            "http(s) URL, a file:// URI or a data URI)")
    path = os.path.expanduser(ref)
    return path if os.path.isabs(path) else os.path.join(base, path)


def file_uri_path(ref: str) -> str:
    """The local path of a ``file://`` URI; ``BadImage`` when it names another machine."""
    parts = urlsplit(ref)
    host = parts.netloc
    if host and host.lower() != "localhost":
        raise BadImage(IMAGE_REFERENCE, f"image {short(ref)} names host '{host}': a file:// URI can only name a file "
                                        f"on this machine (file:///absolute/path/image.jpg); copy the file here and "
                                        "give its local path")
    path = unquote(parts.path)
    if not path:
        raise BadImage(IMAGE_REFERENCE, f"image {short(ref)} names no file: write file:///absolute/path/image.jpg")
    return os.path.expanduser(path)


def _data_header(ref: str) -> tuple[str, bool]:
    """(media type, is base64) of a data URI; ``BadImage`` when it has no ',' or no data."""
    comma = ref.find(",")
    if comma < 0:
        raise BadImage(IMAGE_UNREADABLE, f"image data URI {short(ref)} has no ',' before its data: write "
                                         "data:image/png;base64,<base64 of the file>")
    if comma == len(ref) - 1:
        raise BadImage(IMAGE_UNREADABLE, f"image data URI {short(ref)} holds no data after its ',': encode the "
                                         "image file as base64 after 'base64,'")
    params = ref[5:comma].split(";")
    return params[0].strip().lower(), params[-1].strip().lower() == "base64"


def data_uri_bytes(ref: str) -> tuple[str, bytes]:
    """(media type, bytes) of a data URI; ``BadImage`` with a sentence when it does not decode."""
    media, is_base64 = _data_header(ref)
    payload = ref[ref.find(",") + 1:]
    if not is_base64:
        return media, unquote_to_bytes(payload)
    text = "".join(payload.split())  # line-wrapped base64 (76 columns) is common
    text += "=" * (-len(text) % 4)
    try:
        altchars = b"-_" if ("-" in text or "_" in text) else None  # the URL-safe alphabet
        return media, base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(IMAGE_UNREADABLE, f"image data URI {short(ref)} is not valid base64 ({exc}): encode the "
                                         "image file's bytes with base64 (no other characters)") from None


# ---------------------------------------------------------------------------- part shapes
IMAGE_PART_TYPES = ("image", "image_url", "input_image")
_REFERENCE_KEYS = ("image", "image_url", "url", "path", "value")  # value: LLaMA-Factory's parts


def part_reference(part):
    """The reference an image part (or an ``images`` list entry) carries, or None when it carries none.

    ``BadImage`` for a shape that names an image in a way the workbench cannot read.
    """
    if isinstance(part, str) or not isinstance(part, dict):
        return part or None
    for key in _REFERENCE_KEYS:
        value = part.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, dict):  # OpenAI {"image_url": {"url": ...}}
            return part_reference(value)
        if isinstance(value, str):
            return value
        raise BadImage(IMAGE_REFERENCE, f"image part's '{key}' is a {type(value).__name__}: give a path, URL or "
                                        "data URI string")
    if isinstance(part.get("base64"), str) and part["base64"]:
        return f"data:image;base64,{part['base64']}"
    source = part.get("source")
    if isinstance(source, dict):  # Anthropic
        kind = source.get("type")
        if kind == "base64" and isinstance(source.get("data"), str) and source["data"]:
            return f"data:{source.get('media_type') or 'image'};base64,{source['data']}"
        if kind == "url" and isinstance(source.get("url"), str) and source["url"]:
            return source["url"]
        raise BadImage(IMAGE_REFERENCE, f"image source of type {str(kind)[:40]!r} is not read (or has no data): use "
                                        "{'type': 'base64', 'media_type': 'image/png', 'data': ...} or {'type': "
                                        "'url', 'url': ...}")
    return None


def is_image_part(part) -> bool:
    """An image part by its type, or (without a type) by carrying an image key."""
    if not isinstance(part, dict):
        return False
    kind = part.get("type")
    if kind is not None:
        return kind in IMAGE_PART_TYPES
    return "image" in part or "image_url" in part
