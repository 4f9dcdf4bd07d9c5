"""Issue 27, items 9 and 13 through the real app as launch.py builds it: it serves exactly the
thumbnails it shows (not the dataset's folder, not the workbench home), and answers only
requests addressed to the host it is bound to (DNS rebinding)."""

from __future__ import annotations

import http.client

import pytest

from data_helpers import png, swift, write_jsonl
from test_security import fetch as status_of, free_port


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    """A dataset in a folder that also holds a private key and an unrelated picture."""
    root = tmp_path_factory.mktemp("userhome")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    png(root / "img" / "a.png", color=(10, 200, 10))
    png(root / "holiday.png", color=(1, 2, 3))  # next to the dataset, named by no row
    data = write_jsonl(root / "train.jsonl", [swift(images=("img/a.png",))] * 3)
    return root, data


@pytest.fixture(scope="module")
def app_url(demo, beside):
    from launch import make_app, parse_args

    _, data = beside
    app, kwargs = make_app(parse_args(["--port", str(free_port()), "--dataset", str(data)]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    yield app.local_url.rstrip("/")
    app.close()


def test_files_beside_the_dataset_and_the_workbench_home_are_not_served(app_url, beside, demo):
    from workbench.paths import log_file

    root, data = beside
    log_file().write_text("a log line\n") if not log_file().exists() else None
    for path in (root / ".ssh" / "id_rsa", root / "holiday.png", root / "img" / "a.png", data, log_file(),
                 sorted((demo.data / "images").glob("*.png"))[0]):
        assert path.is_file()
        status, body = status_of(f"{app_url}/gradio_api/file={path}")
        assert status in (403, 404), (path, status)
        assert b"PRIVATE KEY" not in body


def test_the_dataset_tab_still_shows_its_thumbnails(app_url, beside):
    from gradio_client import Client

    _, data = beside
    client = Client(app_url + "/", verbose=False)
    result = client.predict(str(data), None, "auto", "", api_name="/check")
    gallery = result[-4]  # the page's thumbnails; the row panel (cleared) follows
    assert len(gallery) == 3, gallery
    shown = gallery[0]["image"]
    url = shown.get("url") if isinstance(shown, dict) else None
    path = shown.get("path") if isinstance(shown, dict) else shown
    status, body = status_of(url or f"{app_url}/gradio_api/file={path}")
    assert status == 200 and body.startswith(b"\x89PNG")


def _get_with_host(app_url: str, host: str) -> int:
    port = int(app_url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/config", headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def test_requests_for_another_host_are_refused(app_url):
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 reaches the app with its own Host."""
    port = app_url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", f"localhost.evil:{port}", ""):
        assert _get_with_host(app_url, host) == 400, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert _get_with_host(app_url, host) == 200, host


def test_the_allowed_hosts_follow_the_bind_address():
    from workbench.ui.hosts import allowed_hosts, host_name

    assert host_name("Example.COM.:7860") == "example.com" and host_name("[::1]:80") == "::1"
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("0.0.0.0") is None  # a LAN name or proxy cannot be guessed: --auth protects it
    assert allowed_hosts("0.0.0.0", ["app.example.org"])[-1] == "app.example.org"
    assert "192.168.1.5" in allowed_hosts("192.168.1.5")
