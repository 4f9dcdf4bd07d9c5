"""http(s) images: downloaded once into ``<workbench home>/image-cache``, with size and time limits.

A URL's bytes are kept under the SHA-256 of the URL, and only once they are known to be an
image; later checks, the preview, training and inference read that copy and never touch the
network for it again.

A failure is remembered for the life of one ``Downloads`` (one per check, per training run,
per loaded inference model): the row is a problem of that check, training refuses problem
rows before it starts, so nothing retries the URL per epoch. A host that cannot be reached
at all fails every other URL on it at once, so an offline machine reports a file of 10,000
URLs after one connection timeout, not 10,000. The next check (a new ``Downloads``) tries again.

Plain ``urllib`` (proxies from the environment, redirects between http and https only): one
GET per image needs no session or retry policy, and no dependency (``requests``, which
qwen-vl-utils pulls in, would add nothing here). ``workbench.data.fetching`` connects only to
public addresses (unless allowed) and enforces the total deadline; a URL carrying a user name
or password is refused before any connection.
"""

from __future__ import annotations

import hashlib
import io
import os
import http.client
import socket
import threading
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from workbench.data.fetching import CONNECT_TIMEOUT_S, DeadlinePassed, Fetch, Refused
from workbench.data.problems import IMAGE_REFERENCE, IMAGE_UNREACHABLE, BadImage
from workbench.data.refs import short

MAX_BYTES = 64 * 2**20  # far above any training image; a larger answer is not an image worth fetching
TIMEOUT_S = 30.0  # the whole download, redirects included
WORKERS = 8  # parallel downloads in a check


def cache_folder() -> Path:
    from workbench.paths import home

    return home() / "image-cache"


class Downloads:
    """Fetches http(s) images into the cache; remembers failures (per URL and per host) while it lives.

    ``allow_private``: also fetch from loopback, private-network and link-local addresses
    (``data.allow_private_urls``); ``timeout_s``: the deadline of each whole download."""

    def __init__(self, folder: Path | None = None, allow_private: bool = False, timeout_s: float = TIMEOUT_S):
        self.folder = Path(folder) if folder else cache_folder()
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.fetched = 0  # downloads that reached the network (tests and stats read it)
        self._failed: dict[str, BadImage] = {}
        self._hosts: dict[tuple, str] = {}  # (scheme, host, port) -> why it could not be reached
        self._lock = threading.Lock()

    def path_for(self, url: str) -> Path:
        return self.folder / hashlib.sha256(url.encode("utf-8")).hexdigest()[:40]

    def cached(self, url: str) -> Path | None:
        """The cached copy of ``url``, without touching the network; None when there is none."""
        path = self.path_for(url)
        return path if path.is_file() else None

    def get(self, url: str) -> Path:
        """The cached copy, downloading it first when needed. ``BadImage`` (one sentence) when it cannot be had."""
        path = self.path_for(url)
        if path.is_file():
            return path
        with self._lock:
            failed = self._failed.get(url)
            host = _host_key(url)
            unreachable = self._hosts.get(host)
        if failed:
            raise failed
        if _credentials(url):  # refused before the host key is used: one such URL says nothing about the host
            raise self._remember(url, BadImage(IMAGE_REFERENCE, f"image URL {_credentials(url)} carries a user name "
                                                                "or password: remove it (the workbench sends no "
                                                                "credentials), or download the image and give its "
                                                                "local path"), None)
        if unreachable:
            raise self._remember(url, _offline(url, unreachable, earlier=True), None)
        try:
            body = self._download(url)
        except _Unreachable as exc:
            raise self._remember(url, _offline(url, str(exc)), (host, str(exc))) from None
        except BadImage as exc:
            raise self._remember(url, exc, None) from None
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        return path

    def prefetch(self, urls) -> None:
        """Download every URL not cached yet, ``WORKERS`` at a time; failures are remembered, not raised.

        One URL per host goes first, so a host that cannot be reached is tried once, not once per worker."""
        todo = [u for u in dict.fromkeys(urls) if not self.cached(u)]
        if not todo:
            return
        first: dict[tuple, str] = {}
        for url in todo:
            first.setdefault(_host_key(url), url)
        rest = [u for u in todo if first[_host_key(u)] != u]

        def one(url):
            try:
                self.get(url)
            except BadImage:
                pass

        with ThreadPoolExecutor(min(WORKERS, len(todo))) as pool:
            list(pool.map(one, first.values()))
            list(pool.map(one, rest))

    def _remember(self, url: str, error: BadImage, host: tuple | None) -> BadImage:
        with self._lock:
            self._failed[url] = error
            if host:
                self._hosts.setdefault(*host)
        return error

    def _download(self, url: str) -> bytes:
        with self._lock:
            self.fetched += 1
        request = urllib.request.Request(url, headers={"User-Agent": "qwen-vl-workbench", "Accept": "image/*"})
        fetch = Fetch(self.allow_private, self.timeout_s)
        try:
            with fetch, fetch.opener.open(request, timeout=CONNECT_TIMEOUT_S) as response:
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > MAX_BYTES:
                    raise _too_large(url)
                chunks, size = [], 0
                while chunk := response.read1(1 << 16):  # read1: what arrived, without waiting for 64 KiB
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise _too_large(url)
                    if fetch.remaining() < 0:
                        raise DeadlinePassed()
                    chunks.append(chunk)
                if fetch.expired:  # the watchdog shut the socket: what arrived is cut short
                    raise DeadlinePassed()
                if response.length:  # read1 ends quietly when the server closes before Content-Length
                    raise http.client.IncompleteRead(b"".join(chunks), response.length)
        except Refused as exc:
            raise BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} was not fetched: {exc}; {_ALLOW}") from None
        except BadImage:
            raise
        except Exception as exc:
            if fetch.expired or isinstance(exc, DeadlinePassed):
                raise BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} took longer than {self.timeout_s:g} s "
                                                  "to download: download it yourself and give its local path") from None
            raise _failure(url, exc) from None
        body = b"".join(chunks)
        _check_is_image(url, kind, body)
        return body


_ALLOW = ("a dataset's URLs may only name public hosts: if this server is yours, set data.allow_private_urls "
          "(--allow-private-urls), or download the image and give its local path")


def _failure(url: str, exc: Exception) -> Exception:
    """The sentence (or ``_Unreachable`` for the host memo) for an exception of urllib or http.client."""
    if isinstance(exc, urllib.error.HTTPError):
        return BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} answered HTTP {exc.code} ({exc.reason}): "
                                           "check the address")
    if isinstance(exc, urllib.error.URLError):
        return _Unreachable(_reason(exc.reason))
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} stopped sending data for "
                                           f"{CONNECT_TIMEOUT_S:.0f} s: try again, or download it and give its "
                                           "local path")
    if isinstance(exc, (OSError, http.client.HTTPException)):  # reset mid-transfer, bad chunked encoding, ...
        return BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} broke off while downloading "
                                           f"({_reason(exc) or type(exc).__name__}): try again, or give a local path")
    raise exc


def _credentials(url: str) -> str | None:
    """The URL with its user and password masked, when it carries any; None otherwise."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    return short(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl())


class _Unreachable(Exception):
    """No connection to the host at all (refused, no route, name not resolved, connect timeout)."""


def _host_key(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _reason(reason) -> str:
    if isinstance(reason, BaseException):
        return str(getattr(reason, "strerror", None) or reason) or type(reason).__name__
    return str(reason)


def _offline(url: str, reason: str, earlier: bool = False) -> BadImage:
    when = "; an earlier download from the same host failed the same way" if earlier else ""
    return BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} cannot be downloaded ({reason}{when}): this machine "
                                       "looks offline or the host is unreachable; download the image and give its "
                                       "local path, or check again when online")


def _too_large(url: str) -> BadImage:
    limit = f"{MAX_BYTES / 2**20:g} MiB" if MAX_BYTES >= 2**20 else f"{MAX_BYTES} bytes"
    return BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} answers with more than {limit}: "
                                       "that is no training image; download and downscale it, then give its path")


def _check_is_image(url: str, kind: str, body: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    head = body[:512].lstrip().lower()
    if kind in ("text/html", "application/xhtml+xml") or head.startswith((b"<!doctype html", b"<html")):
        raise BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} answers with an HTML page, not an image (a login, "
                                          "error or gallery page?): use the address of the image itself")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)):
                pass
    except Image.DecompressionBombError:
        return  # an image, too large to decode: the check says so with its own limit
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadImage(IMAGE_UNREACHABLE, f"image URL {short(url)} answers with {kind or 'data'} that is not an image "
                                          "Pillow can read: use the address of a PNG, JPEG or WebP image") from None
