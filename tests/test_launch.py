"""launch.py: safe defaults, credentials never on the command line, and the launched app over HTTP."""

import socket
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_defaults_are_loopback_no_share_no_analytics():
    import os

    from launch import make_app, parse_args

    args = parse_args([])
    assert args.model == "demo"
    app, kwargs = make_app(args)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False and kwargs["auth"] is None
    assert kwargs["max_file_size"] == "200mb" and kwargs["server_port"] == 7860
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and app.analytics_enabled is False


def test_auth_from_file_or_env_never_in_clear(tmp_path):
    from launch import read_auth

    creds = tmp_path / "auth.txt"
    creds.write_text("ann:s3cret\n\nbob:pa:ss\n")
    assert read_auth(str(creds), {}) == [("ann", "s3cret"), ("bob", "pa:ss")]
    assert read_auth("env:MY_AUTH", {"MY_AUTH": "cid:pw"}) == [("cid", "pw")]
    assert read_auth(None, {"WORKBENCH_AUTH": "dee:pw"}) == [("dee", "pw")]
    assert read_auth(None, {}) is None
    with pytest.raises(SystemExit, match="not the credentials themselves"):
        read_auth("ann:s3cret", {})
    with pytest.raises(SystemExit, match="MY_AUTH is not set"):
        read_auth("env:MY_AUTH", {})
    bad = tmp_path / "bad.txt"
    bad.write_text("no-colon\n")
    with pytest.raises(SystemExit, match="user:password"):
        read_auth(str(bad), {})


def test_served_folders_are_only_the_shown_thumbnails(tmp_path):
    from launch import allowed_folders, make_app, parse_args
    from workbench.paths import home

    assert allowed_folders() == [str(home() / "thumbnails"), str(home() / "previews")]
    with pytest.raises(SystemExit, match="is not a file"):
        make_app(parse_args(["--dataset", str(tmp_path / "missing.jsonl")]))


@pytest.fixture(scope="module")
def launched(demo, trained_run):
    """The real app on a free loopback port, as launch.py builds it."""
    from launch import make_app, parse_args

    app, kwargs = make_app(parse_args(["--port", str(free_port())]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    yield app
    app.close()


def test_launched_app_binds_loopback_and_serves_only_allowed_files(launched, demo, tmp_path):
    assert launched.server_name == "127.0.0.1" and launched.share is False
    url = launched.local_url.rstrip("/")
    assert url.startswith("http://127.0.0.1:")
    image = sorted((demo.data / "images").glob("heldout_*.png"))[0]
    assert status_of(f"{url}/gradio_api/file={image}") == 403  # shown as a thumbnail copy, never itself
    outside = tmp_path / "secret.png"
    outside.write_bytes(image.read_bytes())
    assert status_of(f"{url}/gradio_api/file={outside}") in (403, 404)


def test_client_compares_base_and_adapter(launched, demo, trained_run):
    from gradio_client import Client, handle_file

    client = Client(launched.local_url, verbose=False)
    image = sorted((demo.data / "images").glob("heldout_*.png"))[0]
    base_text, base_speed, adapter_text, adapter_speed, status = client.predict(
        "demo", str(trained_run.output_dir), handle_file(str(image)), "", "What color is the shape?", "",
        12, 0, 1, api_name="/inference_ask")
    assert "⚠️" not in status and base_text != adapter_text
    assert "tokens/s" in base_speed and "tokens/s" in adapter_speed
    accuracy, table = client.predict("demo", str(trained_run.output_dir), str(demo.heldout), 2, 8, 0, 1,
                                     api_name="/inference_check")
    assert "2 held-out rows" in accuracy and len(table["data"]) == 2
    error = client.predict("demo", "", None, "", "hi", "", 8, 0, 1, api_name="/inference_ask")
    assert error[-1].startswith("⚠️ No adapter chosen")


def test_auth_protects_the_launched_app(demo, monkeypatch):
    from gradio_client import Client

    from launch import make_app, parse_args

    monkeypatch.setenv("WB_TEST_AUTH", "ann:s3cret")
    app, kwargs = make_app(parse_args(["--port", str(free_port()), "--auth", "env:WB_TEST_AUTH"]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        with pytest.raises(Exception):
            Client(app.local_url, verbose=False)
        with pytest.raises(Exception):
            Client(app.local_url, auth=("ann", "wrong"), verbose=False)
        assert Client(app.local_url, auth=("ann", "s3cret"), verbose=False).view_api(print_info=False, return_format="dict")
    finally:
        app.close()
