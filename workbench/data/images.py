"""Image sizes from file headers, cached per path, with a decompression-bomb limit.

PIL's ``Image.open`` reads only the header; ``.size`` is known without decoding pixels, so
a 100k-row file that reuses a few thousand images costs a few thousand header reads.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

# Pillow's own default (about 89.5 megapixels, a 9459 x 9459 image). Above it Pillow warns,
# above twice it refuses; we refuse above it: decoding would need > 256 MiB per image.
MAX_IMAGE_PIXELS = 89_478_485
THUMBNAIL_SIDE = 96


@dataclass(frozen=True)
class ImageInfo:
    width: int = 0
    height: int = 0
    error: str = ""  # empty when readable
    kind: str = ""  # problem kind when not


def read_image_info(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Width and height from the header; never decodes the image and never raises."""
    from PIL import Image, UnidentifiedImageError

    from workbench.data.formats import IMAGE_MISSING, IMAGE_TOO_LARGE, IMAGE_UNREADABLE

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(path) as image:
                width, height = image.size
    except FileNotFoundError:
        return ImageInfo(error=f"image file {path} is missing", kind=IMAGE_MISSING)
    except Image.DecompressionBombError:
        return ImageInfo(error=f"image {path} is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS} "
                               "pixels): downscale it", kind=IMAGE_TOO_LARGE)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return ImageInfo(error=f"image {path} is not a readable image ({type(exc).__name__}): "
                               "replace the file or fix the path", kind=IMAGE_UNREADABLE)
    if width <= 0 or height <= 0:
        return ImageInfo(error=f"image {path} has no pixels", kind=IMAGE_UNREADABLE)
    if width * height > max_pixels:
        return ImageInfo(width, height, f"image {path} is {width}x{height}, too large to decode safely "
                                        f"(over {max_pixels} pixels): downscale it", IMAGE_TOO_LARGE)
    return ImageInfo(width, height)


class ImageHeaders:
    """``read_image_info`` once per path. One instance per check: a file changed later is read again
    by the next check, which makes its own."""

    def __init__(self, max_pixels: int = MAX_IMAGE_PIXELS):
        self.max_pixels = max_pixels
        self._cache: dict[str, ImageInfo] = {}

    def __call__(self, path: str) -> ImageInfo:
        info = self._cache.get(path)
        if info is None:
            info = self._cache[path] = read_image_info(path, self.max_pixels)
        return info

    def __len__(self) -> int:
        return len(self._cache)


def thumbnail(path: str, folder: Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small PNG copy of ``path`` under ``folder`` (made once), or None when unreadable."""
    import hashlib

    from PIL import Image

    try:
        st = os.stat(path)
    except OSError:
        return None
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:20]
    out = folder / f"{key}.png"
    if out.is_file():
        return str(out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return None
            image.draft("RGB", (side, side))  # JPEG: decode at reduced scale
            image.thumbnail((side, side))
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            image.convert("RGB").save(tmp, format="PNG")
            os.replace(tmp, out)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return str(out)
