"""Video at inference: a video prompt answered by base and adapter with the run's video settings,
the held-out check on video rows, ``infer --video``, the Inference tab, and the merged export.

The run is the demo model trained a few steps on a tiny video dataset (the plumbing, not accuracy)."""

import json
from pathlib import Path

import pytest
import torch

from browser_helpers import SECOND, chromium, needs_chromium, new_page, open_tab, served_app
from conftest import run_cli
from data_helpers import png, video, write_jsonl
from export_helpers import load_plain, load_with_adapter, logits

# the run's frames: a few tokens each, fast on CPU (the defaults would give 128+ tokens a frame)
VIDEO_SETTINGS = {"video_min_pixels": 1000, "video_max_pixels": 6000}
# 24 frames at 8 fps = 3 s; qwen-vl-utils' fps 2 gives 6 frames (3 temporal patches of 2); a 64x48
# frame rounds to 56x56 within [1000, 6000] pixels: 4x4 patches of 14
RUN_GRID = [3, 4, 4]


def _row(answer: str, clip: str) -> dict:
    return {"messages": [{"role": "user", "content": "<video>Which way does the bar move?"},
                         {"role": "assistant", "content": answer}], "videos": [clip]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    video(root / "a.mp4", frames=24, width=64, height=48, fps=8)
    video(root / "b.mp4", frames=16, width=64, height=48, fps=8)
    write_jsonl(root / "train.jsonl", [_row("right", "a.mp4"), _row("left", "b.mp4")] * 2)
    write_jsonl(root / "heldout.jsonl", [_row("right", "a.mp4"), _row("left", "b.mp4"), _row("right", "b.mp4")])
    return root


@pytest.fixture(scope="module")
def video_run(clips, demo_config, tmp_path_factory):
    """The demo model with a LoRA adapter trained 3 steps on the video rows (its run.yaml keeps the video settings)."""
    from workbench.training import JobState, TrainingJob

    out = tmp_path_factory.mktemp("video-runs") / "run"
    config = demo_config.replace(data={"train_path": str(clips / "train.jsonl"), **VIDEO_SETTINGS},
                                 training={"max_steps": 3, "save_steps": 0, "warmup_ratio": 0.0, "eval_steps": 0,
                                           "per_device_train_batch_size": 2, "output_dir": str(out)})
    job = TrainingJob(config)
    assert job.run() == JobState.FINISHED, job.message
    return out


@pytest.fixture(scope="module")
def comparer(video_run):
    from workbench.inference import Comparer, adapter_base

    _, run_config = adapter_base(video_run)
    return Comparer("demo", video_run, run_config)


# ---------------------------------------------------------------------------- core
def test_a_video_prompt_is_answered_with_the_runs_video_settings(comparer, clips):
    from workbench.inference import Comparer, Decoding, prompt_sample

    sample = prompt_sample("Which way does the bar move?", video=str(clips / "a.mp4"))
    assert sample.videos == [str(clips / "a.mp4")] and sample.first_user_text.startswith("<video>")
    inputs = comparer._inputs(sample)
    assert inputs["video_grid_thw"].tolist() == [RUN_GRID] and "pixel_values" not in inputs
    # without the run's settings, qwen-vl-utils' defaults (128 tokens a frame at least) would be used
    plain = Comparer("demo")
    assert plain._inputs(sample)["video_grid_thw"][0, 1:].prod() >= 4 * 128

    decoding = Decoding(max_new_tokens=6)
    both = comparer.compare(sample, decoding)
    assert both["base"]["new_tokens"] > 0 and both["adapter"]["new_tokens"] > 0
    with torch.inference_mode():  # the base side is the model with the adapter off, on the same frames
        with comparer.model.disable_adapter():
            off = comparer.model(**inputs).logits
        on = comparer.model(**inputs).logits
    assert float((on - off).abs().max()) > 0.01  # the adapter, trained on videos, changes the answer's logits


def test_bad_video_prompts_are_one_sentence_naming_the_file(clips, tmp_path):
    from workbench.errors import UserError
    from workbench.inference import prompt_sample

    (tmp_path / "notes.mp4").write_text("not a video")
    cases = [(str(tmp_path / "missing.mp4"), r"Video .*missing\.mp4 does not exist: check the path\."),
             (str(tmp_path), "is a folder, not a video file"),
             (str(tmp_path / "notes.mp4"), r"notes\.mp4 is not a readable video")]
    for ref, words in cases:
        with pytest.raises(UserError, match=words):
            prompt_sample("Which way?", video=ref)
    png(tmp_path / "a.png")
    with pytest.raises(UserError, match="image and a video were both given"):
        prompt_sample("Which way?", str(tmp_path / "a.png"), video=str(clips / "a.mp4"))
    assert prompt_sample("Which way?", "  ", video=str(clips / "a.mp4")).images == []  # an empty image box is no image


def test_heldout_check_scores_video_rows(comparer, clips, video_run):
    from PIL import Image

    from workbench.inference import Decoding, heldout_check, heldout_rows

    samples, skipped = heldout_rows(clips / "heldout.jsonl", 8, "demo", config=comparer.config)
    assert len(samples) == 3 and skipped == []
    result = heldout_check(comparer, samples, Decoding(max_new_tokens=4))
    expected = [json.loads(line)["messages"][1]["content"] for line in (clips / "heldout.jsonl").read_text().splitlines()]
    assert [r["expected"] for r in result["rows"]] == expected and result["problems"] == []
    assert result["adapter_accuracy"] == sum(r["adapter"] == e for r, e in zip(result["rows"], expected)) / 3
    for r in result["rows"]:
        assert r["video"].endswith(".mp4") and r["image"] is None
        with Image.open(r["thumbnail"]) as strip:  # the 6 sampled frames side by side
            assert strip.width > 5 * strip.height / 2


# ---------------------------------------------------------------------------- CLI
def test_cli_infer_a_video(video_run, clips, tmp_path, capsys):
    from workbench.cli.main import main

    result = run_cli("infer", "--adapter", video_run, "--video", clips / "a.mp4", "--prompt", "Which way?",
                     "--max-new-tokens", 4, "--json")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["base"]["new_tokens"] > 0 and answers["adapter"]["new_tokens"] > 0
    capsys.readouterr()  # the rest in this process: a subprocess each costs seconds of imports
    assert main(["infer", "--adapter", str(video_run), "--video", str(tmp_path / "gone.mp4"), "--prompt", "Hi"]) == 2
    assert capsys.readouterr().err == f"error: Video {tmp_path / 'gone.mp4'} does not exist: check the path.\n"
    assert main(["infer", "--adapter", str(video_run), "--dataset", str(clips / "heldout.jsonl"),
                 "--max-new-tokens", "3", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["expected"] for r in scores["rows"]] == ["right", "left", "right"] and scores["problems"] == []
    assert 0 <= scores["adapter_accuracy"] <= 1 and "base_accuracy" in scores


# ---------------------------------------------------------------------------- export
def test_merged_export_answers_a_video_as_the_adapter_does(video_run, comparer, clips, demo, tmp_path):
    from workbench.export import export
    from workbench.inference import prompt_sample

    out = export(video_run, tmp_path / "merged", merge=True)
    inputs = [dict(comparer._inputs(prompt_sample("Which way?", video=str(clips / name))))
              for name in ("a.mp4", "b.mp4")]
    assert all("pixel_values_videos" in row for row in inputs)
    reference = logits(load_with_adapter(demo.model, video_run), inputs)
    merged = logits(load_plain(out), inputs)
    scale = max(1.0, max(float(r.abs().max()) for r in reference))
    # fp32 rounding, the image export's tolerance (tests/test_export.py FP32_TOLERANCE)
    assert max(float((m - r).abs().max()) for m, r in zip(merged, reference)) <= 3e-5 * scale
    base = logits(load_plain(demo.model), inputs)
    assert max(float((b - r).abs().max()) for b, r in zip(base, reference)) > 0.01  # the adapter is in the reference


# ---------------------------------------------------------------------------- Inference tab
def test_tab_asks_about_a_video_side_by_side(video_run, clips, tmp_path):
    from gradio.data_classes import FileData

    from workbench.session import Workbench
    from workbench.ui import inference_tab as tab
    from workbench.ui.app import build_app

    upload = [b for b in build_app().blocks.values() if getattr(b, "elem_id", None) == "inference-video"][0]
    received = upload.preprocess(FileData(path=str(clips / "a.mp4"), orig_name="a.mp4"))
    assert received == str(clips / "a.mp4")  # the upload reaches the handler as its path, unconverted
    session = Workbench()
    base_text, base_speed, adapter_text, adapter_speed, status = tab.ask(
        session, "", str(video_run), None, "", "Which way?", "", 4, 0, 1, received, "")
    assert status.startswith("Greedy") and "tokens/s" in base_speed and "tokens/s" in adapter_speed
    png(tmp_path / "a.png")
    both = tab.ask(session, "", str(video_run), str(tmp_path / "a.png"), "", "Which way?", "", 4, 0, 1, None,
                   str(clips / "b.mp4"))[-1]
    assert both.startswith("⚠️") and "image and a video were both given" in both
    missing = tab.ask(session, "", str(video_run), None, "", "Which way?", "", 4, 0, 1, None,
                      str(tmp_path / "x.mp4"))[-1]
    assert missing.startswith("⚠️ Video") and "x.mp4 does not exist" in missing
    video(tmp_path / "one.mp4", frames=1)  # its header reads; sampling it fails, said as a sentence
    short = tab.ask(session, "", str(video_run), None, "", "Which way?", "", 4, 0, 1, None, str(tmp_path / "one.mp4"))
    assert short[-1].startswith("⚠️ Video") and "one.mp4 has 1 frame(s), fewer than the 2" in short[-1]
    # choosing a video empties the image box and path (the demo's picture starts there), and back
    assert tab.video_clears_image(str(clips / "a.mp4")) == (None, "")
    assert tab.image_clears_video(str(tmp_path / "a.png")) == (None, "")
    assert all(isinstance(u, dict) for u in tab.video_clears_image("  "))  # nothing chosen: both left alone


def test_tab_heldout_table_shows_the_frames_of_video_rows(video_run, clips):
    import base64
    import io

    from PIL import Image

    from workbench.session import Workbench
    from workbench.ui import inference_tab as tab

    text, frame = tab.check(Workbench(), "", str(video_run), str(clips / "heldout.jsonl"), 8, 4, 0, 1)
    assert "3 held-out rows" in text and len(frame) == 3
    for cell in frame["image"]:
        assert cell.startswith("![thumbnail](data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(cell.split(",", 1)[1].rstrip(")")))) as strip:
            assert strip.height <= 64 and strip.width > 2 * strip.height  # frames side by side, not one square


@needs_chromium
def test_browser_a_video_upload_empties_the_image_and_is_answered(video_run, clips, demo):
    """In the page: the image box starts with the demo's picture; uploading a video must empty it (else
    the question would carry both) and both sides answer about the video."""
    from playwright.sync_api import expect

    with served_app() as app, chromium() as browser:
        page = new_page(browser, app.local_url)
        panel = open_tab(page, "Inference")
        box = panel.locator("#inference-image")
        expect(box.locator("img").first).to_be_visible(timeout=60 * SECOND)
        panel.get_by_text("…or a video (instead of the image)").click()
        panel.locator("#inference-video input[type=file]").set_input_files(str(clips / "a.mp4"))
        expect(box.locator("img")).to_have_count(0, timeout=30 * SECOND)
        adapter = panel.locator("#adapter-folder input, #adapter-folder textarea").first
        adapter.fill(str(video_run))
        panel.get_by_role("button", name="Ask base and adapter").click()
        expect(panel.locator("#adapter-speed")).to_contain_text("tokens/s", timeout=120 * SECOND)
        expect(panel.locator("#base-speed")).to_contain_text("tokens/s")


def test_heldout_rows_check_videos_with_the_runs_settings(clips, monkeypatch):
    """A video too large decoded at qwen-vl-utils' default fps fits with the run's 1 fps: the run's
    settings decide, as they decide what the model is given."""
    from workbench.data import videos
    from workbench.inference import heldout_rows
    from workbench.settings import RunConfig

    monkeypatch.setattr(videos, "MAX_DECODED_BYTES", 5 * 64 * 48 * 3)  # five frames of a.mp4
    path = clips / "heldout.jsonl"
    samples, skipped = heldout_rows(path, 8, "demo", config=RunConfig().replace(data={"video_fps": 1.0}))
    assert len(samples) == 3 and skipped == []  # 4 frames each
    samples, skipped = heldout_rows(path, 8, "demo")  # 2 fps: a.mp4 gives 6 frames
    assert [s["row"] for s in skipped] == [1] and "GiB decoded (6 frames of 64x48)" in skipped[0]["reason"]
