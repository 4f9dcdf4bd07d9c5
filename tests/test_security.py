"""Security defaults beyond tests/test_launch.py: the file route against crafted paths, the upload
limit on a launched app, the warning for a public bind without auth, and no unpickling of
weights, adapters or checkpoints (a pickle that would run code must never run)."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

PASSWD_LINE = "root:x:0:0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def app_url(demo):
    """The real app as launch.py builds it, with a 1 KB upload limit."""
    from launch import make_app, parse_args

    app, kwargs = make_app(parse_args(["--port", str(free_port()), "--max-file-size", "1kb"]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    yield app.local_url.rstrip("/")
    app.close()


def test_the_file_route_refuses_paths_outside_the_served_folders(app_url, demo, tmp_path):
    from workbench.paths import home

    assert Path("/etc/passwd").read_text().startswith("root:")  # the secret is there to be stolen
    from workbench.data.images import thumbnail

    shown = thumbnail(str(sorted((demo.data / "images").glob("heldout_*.png"))[0]), home() / "thumbnails")
    status, body = fetch(f"{app_url}/gradio_api/file={shown}")
    assert status == 200 and body.startswith(b"\x89PNG")  # the route works for what it should serve

    link = home() / "thumbnails" / f"escape-{uuid.uuid4().hex[:8]}"
    link.symlink_to("/etc/passwd")  # a link inside a served folder pointing out of it
    try:
        crafted = [
            "/etc/passwd",
            f"{home()}/../../../../../../etc/passwd",
            f"{demo.data}/images/../../../../../../../../etc/passwd",
            urllib.parse.quote(f"{home()}/../../../../../../etc/passwd", safe=""),
            f"{home()}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "//etc/passwd",
            "file:///etc/passwd",
            str(link),
        ]
        for path in crafted:
            for route in ("/gradio_api/file=", "/file="):
                status, body = fetch(f"{app_url}{route}{path}")
                assert PASSWD_LINE.encode() not in body, (route, path, status)
                assert status != 200 or b"root:" not in body, (route, path, status)
    finally:
        link.unlink()


def test_uploads_over_the_limit_are_refused(app_url):
    def upload(size: int) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"data.jsonl\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
        return fetch(f"{app_url}/gradio_api/upload", data=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    small_status, small_body = upload(200)
    assert small_status == 200 and b"data.jsonl" in small_body  # an upload under the limit goes through
    big_status, big_body = upload(64 * 1024)
    assert big_status == 413, (big_status, big_body[:200])


def test_binding_beyond_loopback_without_auth_warns(capsys):
    from launch import make_app, parse_args

    _, kwargs = make_app(parse_args(["--host", "0.0.0.0"]))
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["share"] is False
    assert "warning" in capsys.readouterr().err.lower()
    os.environ["WB_SECURITY_TEST_AUTH"] = "ann:pw"
    try:
        _, kwargs = make_app(parse_args(["--host", "0.0.0.0", "--auth", "env:WB_SECURITY_TEST_AUTH"]))
    finally:
        del os.environ["WB_SECURITY_TEST_AUTH"]
    assert kwargs["auth"] == [("ann", "pw")] and "warning" not in capsys.readouterr().err.lower()
    _, kwargs = make_app(parse_args([]))
    assert kwargs["server_name"] == "127.0.0.1" and "warning" not in capsys.readouterr().err.lower()


# ---------------------------------------------------------------------------- no unpickling
class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    import torch

    torch.save({"state": Payload(marker)}, path)


def test_a_pickled_base_model_is_refused_without_running_it(demo, tmp_path):
    import shutil

    from workbench.errors import UserError
    from workbench.settings import RunConfig
    from workbench.training.loading import load_model

    folder = tmp_path / "pickled-model"
    shutil.copytree(demo.model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    plant(folder / "pytorch_model.bin", marker)
    with pytest.raises(UserError, match="safetensors"):
        load_model(str(folder), RunConfig(), device_map={"": "cpu"})
    assert not marker.exists()


def test_a_pickled_adapter_never_runs(demo, trained_run, tmp_path):
    import shutil

    from workbench.inference import Comparer

    folder = tmp_path / "pickled-adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "run.yaml"):
        shutil.copy(Path(trained_run.output_dir) / name, folder / name)
    marker = tmp_path / "ran"
    plant(folder / "adapter_model.bin", marker)
    with pytest.raises(Exception):
        Comparer("demo", folder)
    assert not marker.exists()


def resume_over_pickled_checkpoint(demo_config, tmp_path):
    """A finished run whose checkpoint files were replaced by pickles that would leave a marker, resumed."""
    from workbench.training import JobState, TrainingJob
    from run_helpers import is_complete

    out = tmp_path / "run"
    config = demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                           "max_steps": 2, "save_steps": 2, "output_dir": str(out)})
    assert TrainingJob(config).run() == JobState.FINISHED
    assert is_complete(out / "checkpoint-2")
    marker = tmp_path / "ran"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        plant(out / "checkpoint-2" / name, marker)
    resumed = TrainingJob(config.replace(training={"max_steps": 4}), resume=True)
    assert resumed.run() == JobState.FAILED
    assert not marker.exists()
    return resumed


def test_a_pickled_checkpoint_never_runs_on_resume_and_is_reported_in_one_line(demo_config, tmp_path):
    resumed = resume_over_pickled_checkpoint(demo_config, tmp_path)
    assert "\n" not in resumed.message and "\x1b" not in resumed.message, resumed.message
    assert "checkpoint-2" in resumed.message, resumed.message
