"""Reading images from any reference (``workbench.data.refs``): headers, pixels, thumbnails.

The one place that opens an image, for validation, preview, training's encoder and inference.
PIL's ``Image.open`` reads only the header; ``.size`` is known without decoding pixels, so
a 100k-row file that reuses a few thousand images costs a few thousand header reads, and a
data URI is decoded once per check (``ImageHeaders`` keeps one answer per reference).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workbench.data.problems import IMAGE_MISSING, IMAGE_TOO_LARGE, IMAGE_UNREADABLE, BadImage
from workbench.data.refs import DATA, FILE, MEMORY, URL, data_summary, data_uri_bytes, kind_of, short

# Pillow's own default (about 89.5 megapixels, a 9459 x 9459 image). Above it Pillow warns,
# above twice it refuses; we refuse above it: decoding would need > 256 MiB per image.
MAX_IMAGE_PIXELS = 89_478_485
THUMBNAIL_SIDE = 96
PREVIEW_SIDE = 480


@dataclass(frozen=True)
class ImageInfo:
    width: int = 0
    height: int = 0
    error: str = ""  # empty when readable
    kind: str = ""  # problem kind when not


def _downloads(downloads):
    if downloads is not None:
        return downloads
    from workbench.data.downloads import Downloads

    return Downloads()


@contextmanager
def open_image(ref, downloads=None):
    """The image behind ``ref``, opened lazily (header only until pixels are used).

    ``BadImage`` with one sentence when it cannot be opened; URLs come from the cache,
    downloaded first when needed (through ``downloads``, which remembers failures)."""
    from PIL import Image, UnidentifiedImageError

    kind = kind_of(ref)
    if kind == MEMORY:
        yield ref
        return
    media = ""
    if kind == DATA:
        media, data = data_uri_bytes(ref)
        source = io.BytesIO(data)
    elif kind == URL:
        source = str(_downloads(downloads).get(ref))
    else:
        source = ref
        _refuse_special_file(ref)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(source)
    except FileNotFoundError:
        raise BadImage(IMAGE_MISSING, f"image file {ref} is missing: fix the path") from None
    except IsADirectoryError:
        raise BadImage(IMAGE_UNREADABLE, f"image {ref} is a folder, not an image file: name the file") from None
    except Image.DecompressionBombError:
        raise BadImage(IMAGE_TOO_LARGE, f"image {short(ref)} is too large to decode safely (over "
                                        f"{2 * Image.MAX_IMAGE_PIXELS} pixels): downscale it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImage(IMAGE_UNREADABLE, _not_an_image(ref, kind, media, source, exc)) from None
    with image:
        yield image


def _refuse_special_file(path) -> None:
    """A FIFO named as an image would block Pillow's open forever; a device is no image either."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # Pillow's open says what is wrong (missing, no permission) in its own words
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise BadImage(IMAGE_UNREADABLE, f"image {short(path)} is a device or a pipe, not an image file: name the "
                                         "image file itself")


def _not_an_image(ref, kind: str, media: str, source, exc: Exception) -> str:
    if kind == DATA:
        if media and not media.startswith("image") and media != "application/octet-stream":
            return f"image data URI {short(ref)} holds {media} data, not an image: encode a PNG, JPEG or WebP file"
        what = "text" if _is_text(source.getvalue()[:512]) else "data Pillow cannot read"
        return f"image data URI {short(ref)} does not hold an image (its bytes are {what}): encode a PNG, JPEG or WebP file"
    try:
        with open(source, "rb") as handle:
            head = handle.read(512)
    except OSError:
        head = b""
    holds = "the file holds text, not image data" if _is_text(head) else f"{type(exc).__name__}"
    where = f"image URL {short(ref)} (cached copy {source})" if kind == URL else f"image {ref}"
    return f"{where} is not a readable image ({holds}): replace the file or fix the path"


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def read_image_info(ref, max_pixels: int = MAX_IMAGE_PIXELS, downloads=None) -> ImageInfo:
    """Width and height from the header; never decodes the image and never raises."""
    try:
        with open_image(ref, downloads) as image:
            width, height = image.size
    except BadImage as exc:
        return ImageInfo(error=str(exc), kind=exc.kind)
    if width <= 0 or height <= 0:
        return ImageInfo(error=f"image {short(ref)} has no pixels", kind=IMAGE_UNREADABLE)
    if width * height > max_pixels:
        return ImageInfo(width, height, f"image {short(ref)} is {width}x{height}, too large to decode safely "
                                        f"(over {max_pixels} pixels): downscale it", IMAGE_TOO_LARGE)
    return ImageInfo(width, height)


def load_image(ref, downloads=None):
    """The RGB pixels of ``ref`` (RGBA on white, as qwen-vl-utils converts); ``BadImage`` when unreadable."""
    from PIL import Image
    from qwen_vl_utils.vision_process import to_rgb

    with open_image(ref, downloads) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise BadImage(IMAGE_TOO_LARGE, f"image {short(ref)} is {image.width}x{image.height}, too large to "
                                            f"decode safely (over {MAX_IMAGE_PIXELS} pixels): downscale it")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImage(IMAGE_UNREADABLE, f"image {short(ref)} is not a readable image ({type(exc).__name__}: "
                                             "damaged or truncated): replace the file") from None
        return to_rgb(image)


class ImageHeaders:
    """``read_image_info`` once per reference. One instance per check: a file changed later is read
    again by the next check, which makes its own (and its own ``Downloads``, which retries failures)."""

    def __init__(self, max_pixels: int = MAX_IMAGE_PIXELS, downloads=None):
        self.max_pixels = max_pixels
        self.downloads = _downloads(downloads)
        self._cache: dict = {}

    def __call__(self, ref) -> ImageInfo:
        info = self._cache.get(ref)
        if info is None:
            info = self._cache[ref] = read_image_info(ref, self.max_pixels, self.downloads)
        return info

    def prefetch(self, refs) -> None:
        """Download the URLs among ``refs`` in parallel before their headers are read one by one."""
        self.downloads.prefetch(r for r in refs if kind_of(r) == URL and r not in self._cache)

    def __len__(self) -> int:
        return len(self._cache)


def source_label(ref, downloads=None) -> str:
    """Where an image comes from, for people: a file, a data URI, a URL and its cached copy, memory."""
    kind = kind_of(ref)
    if kind == FILE:
        return f"file {ref}"
    if kind == DATA:
        return f"data URI ({data_summary(ref)})"
    if kind == URL:
        copy = _downloads(downloads).cached(ref)
        return f"URL {short(ref)} (cached copy {copy})" if copy else f"URL {short(ref)} (not downloaded)"
    return short(ref)


def _thumbnail_key(ref, side: int, downloads) -> str | None:
    kind = kind_of(ref)
    if kind == MEMORY:
        return hashlib.sha1(ref.tobytes() + f"|{ref.size}|{side}".encode()).hexdigest()[:20]
    if kind == DATA:
        return hashlib.sha1(f"{ref}|{side}".encode()).hexdigest()[:20]
    path = _downloads(downloads).cached(ref) if kind == URL else ref
    if path is None:
        return None  # a preview never downloads: the check does
    try:
        st = os.stat(path)
    except OSError:
        return None
    return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:20]


def thumbnail(ref, folder: Path, side: int = THUMBNAIL_SIDE, downloads=None) -> str | None:
    """A small PNG copy of the image under ``folder`` (made once), or None when unreadable or not downloaded."""
    from PIL import Image

    key = _thumbnail_key(ref, side, downloads)
    if key is None:
        return None
    out = folder / f"{key}.png"
    if out.is_file():
        return str(out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with open_image(ref, downloads) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return None
            if kind_of(ref) != MEMORY:
                image.draft("RGB", (side, side))  # JPEG: decode at reduced scale
            small = image.copy() if kind_of(ref) == MEMORY else image
            small.thumbnail((side, side))
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            small.convert("RGB").save(tmp, format="PNG")
            os.replace(tmp, out)
    except (BadImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return str(out)
