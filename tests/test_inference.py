"""Inference core, runs listing and the Inference tab's handlers, on the demo model."""

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def adapter(trained_run):
    return str(trained_run.output_dir)


@pytest.fixture(scope="module")
def session():
    from workbench.session import Workbench

    return Workbench()


@pytest.fixture(scope="module")
def heldout(demo):
    from workbench.inference import heldout_samples

    return heldout_samples(demo.heldout, 4)


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, demo):
    """A tiny Qwen2-VL of another width: an adapter of the demo must not load on it."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from workbench.demo import demo_model_config

    processor = AutoProcessor.from_pretrained(demo.model)
    config = demo_model_config(processor.tokenizer)
    config.text_config.hidden_size = config.vision_config.hidden_size = 32
    folder = tmp_path_factory.mktemp("other-base")
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------------- runs
def test_runs_newest_first_with_state_and_final_loss(trained_run, tmp_path):
    from workbench.runs import list_runs, usable_adapter

    finished = tmp_path / "finished"
    shutil.copytree(trained_run.output_dir, finished)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(trained_run.output_dir / "checkpoint-20", interrupted / "checkpoint-20")
    shutil.copy(trained_run.output_dir / "run.yaml", interrupted / "run.yaml")
    (interrupted / "metrics.jsonl").write_text('{"step": 5, "loss": 2.5}\n{"step": 10, "loss": 2.25}\n{"step": 1')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.yaml").write_text("model: {name_or_path: demo}\n")
    (tmp_path / "not-a-run").mkdir()
    for age, folder in enumerate(("interrupted", "finished", "empty")):
        os.utime(tmp_path / folder, (1e9 - age * 100, 1e9 - age * 100))

    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["interrupted", "finished", "empty"]
    by_name = {r.name: r for r in runs}
    last_loss = [json.loads(line)["loss"] for line in (finished / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)][-1]
    assert by_name["finished"].state == "finished" and by_name["finished"].final_loss == pytest.approx(last_loss)
    assert by_name["finished"].step == by_name["finished"].max_steps == 40 and by_name["finished"].base == "demo"
    assert by_name["interrupted"].state == "interrupted" and by_name["interrupted"].final_loss == 2.25
    assert usable_adapter(interrupted) == str(interrupted / "checkpoint-20")
    assert by_name["empty"].state == "empty" and by_name["empty"].adapter_dir is None
    with pytest.raises(Exception, match="holds no adapter"):
        usable_adapter(tmp_path / "empty")


# ---------------------------------------------------------------------------- core
def test_base_answer_is_the_plain_base_model(adapter, heldout):
    """disable_adapter() must give exactly the base model's answer; the adapter must change it."""
    from workbench.inference import Comparer, Decoding

    decoding = Decoding(max_new_tokens=12)
    with_adapter = Comparer("demo", adapter)
    plain = Comparer("demo")
    for sample in heldout[:2]:
        both = with_adapter.compare(sample, decoding)
        assert both["base"]["text"] == plain.answer(sample, True, decoding)["text"]
        assert both["adapter"]["new_tokens"] > 0 and both["base"]["tokens_per_s"] > 0
    answers = [with_adapter.compare(s, decoding) for s in heldout]
    assert any(a["base"]["text"] != a["adapter"]["text"] for a in answers)


def test_heldout_check_scores_exact_and_normalised(adapter, heldout):
    from workbench.inference import Comparer, heldout_check, normalise

    result = heldout_check(Comparer("demo", adapter), heldout)
    assert len(result["rows"]) == 4 and result["rows"][0]["expected"] == heldout[0].answer
    for side in ("base", "adapter"):
        exact = sum(r[f"{side}_match"] for r in result["rows"]) / 4
        assert result[f"{side}_accuracy"] == exact
        assert result[f"{side}_accuracy_normalised"] >= exact
    assert normalise("  Red. ") == normalise("red") != normalise("reed")


def test_adapter_for_another_base_is_refused(adapter, other_base):
    from workbench.errors import UserError
    from workbench.inference import Comparer

    with pytest.raises(UserError, match="was trained on 'demo'.*hidden_size 64 vs 32.*choose base 'demo'"):
        Comparer(other_base, adapter)


def test_bad_inputs_are_one_clear_sentence(tmp_path, demo):
    from workbench.errors import UserError
    from workbench.inference import Decoding, heldout_samples, prompt_sample

    not_image = tmp_path / "photo.png"
    not_image.write_text("not an image")
    cases = [
        (lambda: prompt_sample("hi", str(not_image)), "is not a readable image"),
        (lambda: prompt_sample("hi", str(tmp_path / "missing.png")), "does not exist"),
        (lambda: prompt_sample("  "), "prompt is empty"),
        (lambda: Decoding(max_new_tokens=0).generate_kwargs(), "max_new_tokens must be positive"),
        (lambda: Decoding(temperature=0.7, top_p=1.5).generate_kwargs(), "top_p"),
        (lambda: heldout_samples(tmp_path / "none.jsonl"), "does not exist"),
        (lambda: heldout_samples(None, 0), "must be positive"),
    ]
    for call, words in cases:
        with pytest.raises(UserError, match=words):
            call()
    assert len(heldout_samples(None, 3)) == 3  # no path: the demo's held-out rows


def test_inference_is_refused_while_a_job_trains(adapter, demo_config, tmp_path):
    from workbench.errors import UserError
    from workbench.session import Workbench

    session = Workbench()
    job = session.start_training(demo_config.replace(training={"max_steps": 300, "output_dir": str(tmp_path / "busy")}))
    try:
        with pytest.raises(UserError, match="already running .*busy"):
            with session.inference("demo", adapter):
                pass
        with pytest.raises(UserError, match="busy is training in the app"):  # seen from another process too
            with Workbench().inference("demo", adapter):
                pass
    finally:
        job.request_stop()
        job.wait(120)
    with session.inference("demo", adapter) as loaded:  # the devices are free again
        assert loaded.adapter_dir == adapter


# ---------------------------------------------------------------------------- tab handlers
def test_tab_ask_side_by_side_and_model_cached(adapter, demo, monkeypatch, session):
    from workbench.ui import inference_tab as tab

    image, _ = tab.default_inputs("demo")
    assert image and Path(image).is_file()
    base_text, base_speed, adapter_text, adapter_speed, status = tab.ask(
        session, "", adapter, image, "", tab.DEFAULT_PROMPT, "", 12, 0, 1)
    assert "⚠️" not in status and "tokens/s" in base_speed and "tokens/s" in adapter_speed
    assert session.inference_key == ("demo", adapter)

    def no_reload(*args, **kwargs):
        raise AssertionError("the model was loaded again for the same (base, adapter)")

    monkeypatch.setattr("workbench.inference.Comparer", no_reload)
    again = tab.ask(session, "demo", adapter, None, image, tab.DEFAULT_PROMPT, "Answer in one word.", 12, 0, 1)
    assert again[-1].startswith("Greedy") and session.inference_key == ("demo", adapter)


def test_tab_heldout_table_and_accuracy(adapter, demo, session):
    from workbench.ui import inference_tab as tab

    text, frame = tab.check(session, "demo", adapter, str(demo.heldout), 3, 8, 0, 1)
    assert "3 held-out rows" in text and "Exact match" in text and "Normalised" in text
    assert list(frame.columns) == tab.HELDOUT_COLUMNS and len(frame) == 3
    assert frame["image"].str.startswith("![thumbnail](data:image/png;base64,").all()
    assert set(frame["adapter match"].str[0]) <= {"✓", "✗"}


def test_tab_errors_are_warnings_not_tracebacks(adapter, tmp_path, other_base, session):
    from workbench.ui import inference_tab as tab

    assert tab.ask(session, "demo", "", None, "", "hi", "", 8, 0, 1)[-1].startswith("⚠️ No adapter chosen")
    assert "holds no adapter" in tab.ask(session, "demo", str(tmp_path), None, "", "hi", "", 8, 0, 1)[-1]
    assert "was trained on 'demo'" in tab.ask(session, other_base, adapter, None, "", "hi", "", 8, 0, 1)[-1]
    text, frame = tab.check(session, "demo", adapter, str(tmp_path / "nope.jsonl"), 3, 8, 0, 1)
    assert text.startswith("⚠️") and "does not exist" in text and frame.empty


def test_tab_run_list_follows_new_runs(trained_run, monkeypatch, tmp_path):
    from workbench.ui import inference_tab as tab

    from workbench.session import Workbench

    monkeypatch.setattr("workbench.runs.runs_root", lambda: tmp_path / "runs")
    session = Workbench()
    assert tab.refresh_runs(session, None, "demo")[0]["choices"] == []
    shutil.copytree(trained_run.output_dir, tmp_path / "runs" / "later-run")
    dropdown, adapter_dir, base, note = tab.refresh_runs(session, None, "")  # a run that finished while the app was open
    assert dropdown["value"] == str(tmp_path / "runs" / "later-run") and "finished" in dropdown["choices"][0][0]
    assert adapter_dir == str(tmp_path / "runs" / "later-run") and base == "demo" and note == ""
    kept = tab.refresh_runs(session, str(tmp_path / "runs" / "later-run"), "demo")  # same selection: a pasted folder stays
    assert "value" not in kept[0] and kept[1] == {"__type__": "update"}
    # a run this session watched in a folder of its own (outside the runs folder) is listed too, as Training lists it
    shutil.copytree(trained_run.output_dir, tmp_path / "elsewhere" / "own-run")
    session.watch(str(tmp_path / "elsewhere" / "own-run"))
    assert str(tmp_path / "elsewhere" / "own-run") in [p for _, p in tab.runs_menu(session, None)[0]]


# ---------------------------------------------------------------------------- CLI
def test_cli_heldout_json_and_runs(adapter, other_base):
    result = run_cli("infer", "--adapter", adapter, "--dataset", "demo", "--limit", 3, "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(scores["rows"]) == 3 and 0 <= scores["adapter_accuracy"] <= 1
    runs = run_cli("infer", "--runs", "--json")
    assert runs.returncode == 0 and isinstance(json.loads(runs.stdout.strip().splitlines()[-1]), list)
    wrong = run_cli("infer", "--adapter", adapter, "--base", other_base, "--prompt", "hi")
    assert wrong.returncode == 2 and "was trained on 'demo'" in wrong.stderr and "Traceback" not in wrong.stderr


# ---------------------------------------------------------------------------- unreadable images (issue 10, item 8)
@pytest.fixture
def broken_heldout(tmp_path, demo):
    """Two demo rows, then a text file named fake.jpg, then a PNG cut in half (header intact)."""
    from data_helpers import png, swift, write_jsonl

    (tmp_path / "fake.jpg").write_text("I am text, not a JPEG")
    whole = png(tmp_path / "half.png", 56, 56).read_bytes()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    good = [json.loads(line) for line in demo.heldout.read_text().splitlines()[:2]]
    for record in good:
        record["images"] = [str(demo.heldout.parent / p) for p in record["images"]]
    path = write_jsonl(tmp_path / "heldout.jsonl", good + [swift(images=["fake.jpg"]), swift(images=["half.png"])])
    return path


def test_tab_heldout_with_unreadable_images_answers_with_sentences(adapter, broken_heldout, tmp_path, session):
    from workbench.ui import inference_tab as tab

    text, frame = tab.check(session, "demo", adapter, str(broken_heldout), 8, 4, 0, 1)
    assert "2 held-out rows" in text and len(frame) == 2
    assert "2 row(s) skipped" in text and "Row 3: image" in text and "fake.jpg is not a readable image" in text
    assert "holds text" in text
    (tmp_path / "only-fake.jsonl").write_text(broken_heldout.read_text().splitlines()[2] + "\n")
    text, frame = tab.check(session, "demo", adapter, str(tmp_path / "only-fake.jsonl"), 8, 4, 0, 1)
    assert text.startswith("⚠️") and "no usable rows" in text and "fake.jpg is not a readable image" in text


def test_cli_heldout_with_unreadable_images_names_the_rows(adapter, broken_heldout):
    result = run_cli("infer", "--adapter", adapter, "--dataset", broken_heldout, "--max-new-tokens", 3)
    assert result.returncode == 0, result.stderr
    assert "row 3: skipped: image" in result.stdout and "fake.jpg is not a readable image" in result.stdout
    assert "row 4: skipped: Image" in result.stdout and "truncated" in result.stdout
    assert "bug" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_tab_ask_with_a_text_file_named_jpg(adapter, tmp_path, session):
    """Gradio's Image opens uploads with PIL before any handler runs; the tab's keeps the path instead."""
    from gradio.data_classes import ImageData

    from workbench.ui import inference_tab as tab

    fake = tmp_path / "fake.jpg"
    fake.write_text("I am text, not a JPEG")
    received = tab.tolerant_image(type="filepath").preprocess(ImageData(path=str(fake), orig_name="fake.jpg"))
    assert received == str(fake)
    status = tab.ask(session, "demo", adapter, received, "", "What color?", "", 4, 0, 1)[-1]
    assert status.startswith("⚠️ Image") and "fake.jpg is not a readable image" in status and "holds text" in status


def test_tab_a_typed_image_path_wins_over_the_image_box(adapter, demo, tmp_path, session):
    """Seen in the browser: the image box starts with the demo's image, and a path typed beside it
    was ignored (the answer was about the box's image, with no word about the path)."""
    from workbench.ui import inference_tab as tab

    image, _ = tab.default_inputs("demo")
    status = tab.ask(session, "demo", adapter, image, str(tmp_path / "nope.png"), "What color?", "", 4, 0, 1)[-1]
    assert status.startswith("⚠️ Image") and "nope.png does not exist" in status
    assert tab.ask(session, "demo", adapter, image, "  ", "What color?", "", 4, 0, 1)[-1].startswith("Greedy")


def test_tab_heldout_rows_zero_and_a_zip(adapter, demo, tmp_path, session):
    """Seen in the browser: Rows 0 got Gradio's bare "Error" over the results (its minimum check runs
    before any handler), and a .zip, which the Dataset tab accepts, was 'binary, not JSON text'."""
    import zipfile

    from workbench.ui import inference_tab as tab
    from workbench.ui.app import build_app

    rows = [b for b in build_app().blocks.values() if getattr(b, "elem_id", None) == "heldout-rows"]
    assert rows[0].preprocess(0) == 0
    text, frame = tab.check(session, "demo", adapter, str(demo.heldout), 0, 8, 0, 1)
    assert text.startswith("⚠️") and "must be positive, got 0" in text and frame.empty

    lines = Path(demo.heldout).read_text().splitlines()[:2]
    with zipfile.ZipFile(tmp_path / "held.zip", "w") as archive:
        archive.writestr("held/heldout.jsonl", "\n".join(lines) + "\n")
        for line in lines:
            name = json.loads(line)["images"][0]
            archive.write(Path(demo.heldout).parent / name, f"held/{name}")
    text, frame = tab.check(session, "demo", adapter, str(tmp_path / "held.zip"), 5, 8, 0, 1)
    assert "2 held-out rows" in text and len(frame) == 2
