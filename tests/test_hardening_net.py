"""Issue 27, items 7, 8 and 13 (URLs): a dataset's image URLs reach public addresses only (unless
allowed), after every redirect, at the address that was checked; a download ends at its deadline
however slowly the server sends; a URL with a user name is refused without marking its host."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.data_helpers import closed_port, png
from workbench.data.problems import BadImage


class Server:
    """A local web server on ``host``: /w.png an image, /to?<url> a redirect, /drip-body and
    /drip-headers one byte every 0.2 s (8 s in all), counting hits per path."""

    def __init__(self, host: str, image: bytes):
        self.host, self.image, self.hits = host, image, {}

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path, _, query = self.path.partition("?")
                server.hits[path] = server.hits.get(path, 0) + 1
                try:
                    if path == "/to":
                        self.send_response(302)
                        self.send_header("Location", query)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif path == "/drip-body":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.send_header("Content-Length", "40")
                        self.end_headers()
                        self.drip(server.image[:40])
                    elif path == "/drip-headers":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        self.drip(b"a" * 40)
                    else:
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.send_header("Content-Length", str(len(server.image)))
                        self.end_headers()
                        self.wfile.write(server.image)
                except OSError:
                    pass  # the client gave up: what these tests want

            def drip(self, data: bytes):
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return png(tmp_path_factory.mktemp("net") / "w.png").read_bytes()


@pytest.fixture()
def local(image):
    with Server("127.0.0.1", image) as server:
        yield server


@pytest.fixture()
def other(image):
    """A second loopback address: "another host" for redirects (Linux routes all of 127/8 to lo)."""
    with Server("127.0.0.2", image) as server:
        yield server


def downloads(tmp_path, **kwargs):
    from workbench.data.downloads import Downloads

    return Downloads(tmp_path / "cache", **kwargs)


def test_loopback_and_metadata_addresses_are_refused_before_connecting(local, tmp_path):
    port = local.port
    urls = [f"http://127.0.0.1:{port}/w.png", f"http://localhost:{port}/w.png", f"http://0.0.0.0:{port}/w.png",
            f"http://2130706433:{port}/w.png", f"http://[::1]:{port}/w.png", f"http://[::ffff:127.0.0.1]:{port}/w.png",
            "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/w.png", "http://192.168.1.1/w.png",
            "http://224.0.0.1/w.png"]
    fetcher = downloads(tmp_path)
    for url in urls:
        with pytest.raises(BadImage) as caught:
            fetcher.get(url)
        message = str(caught.value)
        assert "was not fetched" in message and "allow_private_urls" in message, message
    assert local.hits == {}, "a refused address was connected to"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_refused_address_says_nothing_about_its_ports(local, tmp_path):
    fetcher = downloads(tmp_path)
    messages = []
    for port in (local.port, closed_port()):
        with pytest.raises(BadImage) as caught:
            fetcher.get(f"http://127.0.0.1:{port}/w.png")
        messages.append(str(caught.value).replace(str(port), "PORT"))
    assert messages[0] == messages[1] and "Connection refused" not in messages[1], messages


def test_the_setting_allows_a_server_of_ones_own(local, tmp_path):
    path = downloads(tmp_path, allow_private=True).get(f"{local.url}/w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and local.hits == {"/w.png": 1}


def test_a_redirect_from_a_public_host_to_a_private_one_is_refused(local, other, tmp_path, monkeypatch):
    from workbench.data import fetching

    monkeypatch.setattr(fetching, "PUBLIC_FOR_TESTS", {"127.0.0.1"})  # the first host stands for a public one
    url = f"{local.url}/to?{other.url}/w.png"
    with pytest.raises(BadImage, match=r"127\.0\.0\.2 is a loopback address"):
        downloads(tmp_path).get(url)
    assert local.hits == {"/to": 1} and other.hits == {}
    assert downloads(tmp_path).get(f"{local.url}/w.png").is_file()  # the "public" host itself is fetched
    assert downloads(tmp_path, allow_private=True).get(url).is_file() and other.hits == {"/w.png": 1}


def test_the_checked_address_is_the_one_connected_to(local, tmp_path, monkeypatch):
    """DNS rebinding: a name that resolves to a public address when checked and to another when
    connecting must reach the checked one (here 127.0.0.1 stands for public, 127.0.0.2 for the target)."""
    from workbench.data import fetching

    monkeypatch.setattr(fetching, "PUBLIC_FOR_TESTS", {"127.0.0.1"})
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host == "images.example":
            host = next(answers)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    path = downloads(tmp_path).get(f"http://images.example:{local.port}/w.png")
    assert path.is_file() and local.hits == {"/w.png": 1}


@pytest.mark.parametrize("route", ["/drip-body", "/drip-headers"])
def test_a_slow_server_cannot_hold_a_download_past_its_deadline(local, tmp_path, route):
    fetcher = downloads(tmp_path, allow_private=True, timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(BadImage, match=r"took longer than 1\.5 s"):
        fetcher.get(f"{local.url}{route}")
    elapsed = time.monotonic() - start
    assert elapsed < 1.5 + 1.0, f"{elapsed:.1f} s for a 1.5 s deadline"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_url_with_a_user_name_is_refused_and_its_host_stays_usable(local, tmp_path):
    fetcher = downloads(tmp_path, allow_private=True)
    with pytest.raises(BadImage, match="carries a user name or password") as caught:
        fetcher.get(f"http://alice:pw@127.0.0.1:{local.port}/w.png")
    assert "alice" not in str(caught.value) and "pw@" not in str(caught.value)
    assert fetcher.get(f"{local.url}/w.png").is_file()  # the same host, same Downloads: not marked offline
    assert local.hits == {"/w.png": 1}
