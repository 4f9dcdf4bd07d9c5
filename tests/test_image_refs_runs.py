"""Every image reference form through a 2-step training run on the demo model and the held-out
check; URL images fetched once (not per epoch); an offline URL reported, never crashed on."""

import json

import pytest

from conftest import run_cli
from data_helpers import ImageServer, closed_port, data_uri, png, write_jsonl


def row(image_part, answer):
    return {"messages": [{"role": "user", "content": [image_part, {"type": "text", "text": "What color is the shape?"}]},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture(autouse=True)
def loopback_is_public(monkeypatch):
    """These tests serve their images from 127.0.0.1, which the address check refuses by default
    (tests/test_hardening_net.py tests that check); in-process, loopback counts as public here."""
    from workbench.data import fetching

    monkeypatch.setattr(fetching, "PUBLIC_FOR_TESTS", {"127.0.0.1"})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A messages file with one row per reference form (a local server for the URLs)."""
    root = tmp_path_factory.mktemp("mixed")
    red, blue = png(root / "img" / "red.png", 56, 56, (220, 30, 30)), png(root / "web" / "blue.png", 84, 56, (30, 60, 220))
    png(root / "web" / "anthropic.png", 56, 56, (30, 170, 50))
    with ImageServer(root / "web") as server:
        b64 = data_uri(red).split(",", 1)[1]
        rows = [row({"type": "image", "image": "img/red.png"}, "red"),
                row({"type": "image", "image": f"file://{red}"}, "red"),
                row({"type": "image", "image": data_uri(red, "image")}, "red"),
                row({"type": "image", "image": f"{server.url}/blue.png"}, "blue"),
                row({"type": "image_url", "image_url": {"url": data_uri(red)}}, "red"),
                row({"type": "image_url", "image_url": f"{server.url}/blue.png"}, "blue"),
                row({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}}, "red"),
                row({"type": "image", "source": {"type": "url", "url": f"{server.url}/anthropic.png"}}, "green")]
        yield {"path": write_jsonl(root / "mixed.jsonl", rows), "server": server, "root": root, "rows": len(rows)}


def test_two_step_run_on_every_form_fetches_each_url_once(mixed, demo_config, tmp_path):
    """Each step is a whole epoch (batch = every row): the URL images are read from the cache both times."""
    from workbench.training import JobState, TrainingJob

    config = demo_config.replace(
        data={"train_path": str(mixed["path"])},
        training={"max_steps": 2, "per_device_train_batch_size": mixed["rows"], "save_steps": 0,
                  "logging_steps": 1, "output_dir": str(tmp_path / "run")})
    job = TrainingJob(config)
    assert job.run() == JobState.FINISHED, job.message
    assert job.step == 2 and (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert mixed["server"].hits["/blue.png"] == 1 and mixed["server"].hits["/anthropic.png"] == 1


def test_run_with_an_offline_url_is_refused_with_the_url_named(mixed, demo_config, tmp_path):
    from workbench.training import JobState, TrainingJob

    offline = f"http://127.0.0.1:{closed_port()}/gone.png"
    path = write_jsonl(tmp_path / "offline.jsonl", [row({"type": "image", "image": "img/red.png"}, "red"),
                                                    row({"type": "image", "image": offline}, "red")])
    png(tmp_path / "img" / "red.png")
    config = demo_config.replace(data={"train_path": str(path)},
                                 training={"max_steps": 2, "output_dir": str(tmp_path / "run")})
    job = TrainingJob(config)
    assert job.run() == JobState.FAILED
    assert f"row 2: image URL {offline} cannot be downloaded" in job.message and "offline" in job.message


def test_encoder_does_not_retry_a_failed_url_per_epoch(demo):
    from transformers import AutoProcessor

    from workbench.data.collate import SampleEncoder
    from workbench.data.problems import BadImage
    from workbench.data.sample import Sample, Turn

    encoder = SampleEncoder(AutoProcessor.from_pretrained(demo.model), 256, 3136, 12544)
    offline = f"http://127.0.0.1:{closed_port()}/x.png"
    sample = Sample([Turn("user", "<image>Colour?"), Turn("assistant", "red")], [offline], row=7)
    for _ in range(3):  # three epochs drawing the same row
        with pytest.raises(BadImage, match="cannot be downloaded"):
            encoder.encode(sample)
    assert encoder.downloads.fetched == 1


def test_heldout_check_answers_every_form(mixed):
    from workbench.inference import Comparer, Decoding, heldout_check, heldout_rows

    samples, skipped = heldout_rows(mixed["path"], 20)
    assert len(samples) == mixed["rows"] and skipped == []
    result = heldout_check(Comparer("demo"), samples, Decoding(max_new_tokens=3))
    assert len(result["rows"]) == mixed["rows"] and result["problems"] == []
    assert all(r["thumbnail"] and r["thumbnail"].endswith(".png") for r in result["rows"])
    assert all(len(r["image"]) < 120 for r in result["rows"])  # a data URI is shown by its prefix
    assert mixed["server"].hits["/blue.png"] == 1


def test_heldout_cli_on_every_form(mixed, trained_run):
    result = run_cli("infer", "--adapter", trained_run.output_dir, "--dataset", mixed["path"], "--limit", "8",
                     "--max-new-tokens", "3", "--json", "--allow-private-urls")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["rows"]) == mixed["rows"] and out["problems"] == []
