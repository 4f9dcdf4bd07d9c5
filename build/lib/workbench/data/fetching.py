"""One GET of a URL a dataset row names: public addresses only, one total deadline.

A dataset is not trusted: a row may name ``http://127.0.0.1:8080/admin``, ``http://169.254.169.254/``
(cloud metadata), ``http://2130706433/`` (127.0.0.1 as one number) or a public host that
redirects to any of them. Every connection (the first and each redirect's) resolves the host,
refuses private, loopback, link-local, multicast, reserved and unspecified addresses unless the
user allows them (``data.allow_private_urls``, ``--allow-private-urls``), and then connects to
the address it checked, never resolving the name again (DNS rebinding). A refused address is
refused before any packet is sent to it, so the answer never says whether a port is open.

The deadline is for the whole download, redirects included: when it passes, a watchdog shuts
the sockets down, so a server that sends one byte a second cannot hold a check open (each
blocking operation also has its own ``CONNECT_TIMEOUT_S``).

Through a proxy from the environment (``http_proxy``/``https_proxy``) the proxy is trusted as
configured; the target name is resolved here and checked, but the proxy resolves it again.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 10.0  # each blocking socket operation

# Test-only: addresses treated as public so a test can redirect from a "public" local server to a
# private one. Nothing outside tests adds to it.
PUBLIC_FOR_TESTS: set[str] = set()


class Refused(Exception):
    """The URL names (or resolves to, or redirects to) an address that is not public."""

    def __init__(self, host: str, address: str, what: str):
        super().__init__(f"{host} is {address}, {what}" if host != address else f"{address} is {what}")
        self.host, self.address, self.what = host, address, what


class DeadlinePassed(Exception):
    """The whole download took longer than its deadline."""


def address_kind(address: str) -> str | None:
    """Why ``address`` is not a public one ('a loopback address', ...), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour):
        ip = ip.ipv4_mapped or ip.sixtofour
    if str(ip) in PUBLIC_FOR_TESTS:
        return None
    for test, what in (("is_unspecified", "the unspecified address"), ("is_loopback", "a loopback address"),
                       ("is_link_local", "a link-local address (cloud metadata lives there)"),
                       ("is_multicast", "a multicast address"), ("is_private", "a private-network address"),
                       ("is_reserved", "a reserved address")):
        if getattr(ip, test):
            return what
    return None if ip.is_global else "not a public address"


class Fetch:
    """One download's policy and deadline; its ``opener`` connects only to checked addresses."""

    def __init__(self, allow_private: bool, timeout_s: float):
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        proxies = urllib.request.getproxies()
        self._proxies = {(urlsplit(p).hostname, urlsplit(p).port) for p in proxies.values() if "://" in p}
        handlers = [_PinnedHTTP(self), _PinnedHTTPS(self), _HttpRedirectsOnly()]
        self.opener = urllib.request.build_opener(*handlers)  # proxies from the environment, as urlopen

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, each checked; ``Refused`` when any is not public (and not allowed)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # gaierror: urllib says "not resolved"
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self.allow_private:
            for address in addresses:
                what = address_kind(address)
                if what:
                    raise Refused(host, address, what)
        return addresses

    def create_connection(self, address, timeout=None, source_address=None, **_):
        """``socket.create_connection`` for http.client, to a checked address of the host (or to the proxy)."""
        host, port = address
        if (host, port) in self._proxies:  # the user's own proxy, configured in the environment
            targets = [host]
        else:
            targets = self.addresses(host, port)
        error: OSError | None = None
        for target in targets:
            remaining = self.remaining()
            if remaining <= 0:
                raise DeadlinePassed()
            try:
                sock = socket.create_connection((target, port), min(timeout or CONNECT_TIMEOUT_S, remaining),
                                                source_address)
            except OSError as exc:
                error = exc
                continue
            with self._lock:
                if self.expired:
                    sock.close()
                    raise DeadlinePassed()
                self._sockets.append(sock)
            return sock
        raise error or OSError("no address to connect to")

    def check_target(self, req) -> None:
        """Through a proxy no connection to the target is made here: its name is checked instead."""
        if self.allow_private or not req.has_proxy():
            return
        parts = urlsplit(req.full_url)
        self.addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    def expire(self) -> None:
        """The deadline passed: unblock every read by shutting the sockets down."""
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        self._watchdog = threading.Timer(max(0.0, self.remaining()), self.expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *exc):
        self._watchdog.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        return False


def _connection(cls, fetch: Fetch, host, **kwargs):
    connection = cls(host, **kwargs)
    connection._create_connection = fetch.create_connection  # http.client's own seam for the socket
    return connection


class _PinnedHTTP(urllib.request.HTTPHandler):
    def __init__(self, fetch: Fetch):
        super().__init__()
        self.fetch = fetch

    def http_open(self, req):
        self.fetch.check_target(req)
        return self.do_open(functools.partial(_connection, http.client.HTTPConnection, self.fetch), req)


class _PinnedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, fetch: Fetch):
        super().__init__()
        self.fetch = fetch

    def https_open(self, req):
        self.fetch.check_target(req)
        return self.do_open(functools.partial(_connection, http.client.HTTPSConnection, self.fetch), req,
                            context=self._context)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """urllib also follows redirects to ftp://; an image URL may only lead to another http(s) URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {urlsplit(newurl).scheme}: refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
