"""Dataset tab handlers, called as plain functions (no browser), over the demo and broken files."""

import json

import pytest

from data_helpers import swift, write_jsonl


@pytest.fixture(scope="module")
def config(demo_config):
    return demo_config.to_dict()


@pytest.fixture(scope="module")
def checked(demo, config):
    from workbench.ui.dataset_tab import check

    return check(str(demo.train), None, "auto", config)


def test_default_path_is_the_demo_train_file(demo):
    from workbench.ui.dataset_tab import default_path
    from workbench.ui.app import LaunchOptions

    assert default_path(LaunchOptions()) == str(demo.train)
    assert default_path(LaunchOptions(model="/some/model")) == ""
    assert default_path(LaunchOptions(dataset="/x.jsonl")) == "/x.jsonl"


def test_check_summarises_and_pages(checked, demo):
    holder, summary, problems, stats, hist, page, pages, table, gallery, *row_panel = checked
    assert "**320** rows, **320** valid, **0** with problems" in summary
    assert problems.empty and hist["visible"] is True and int(hist["value"]["rows"].sum()) == 320
    assert "p95" in stats and "visual share" in stats
    assert (page, pages) == (1, "of 16") and list(table["row"][:3]) == [1, 2, 3] and len(gallery) == 20

    from workbench.ui.dataset_tab import turn_page

    page, pages, table, gallery = turn_page(holder, 16)
    assert page == 16 and list(table["row"])[-1] == 320 and gallery[-1][1] == "row 320"
    assert turn_page(holder, 0)[0] == 1


def test_show_row_highlights_the_answer(checked, config):
    from workbench.ui.dataset_tab import show_row

    images, segments, counts = show_row(checked[0], 3, config)
    assert len(images) == 1 and images[0][0].endswith(".png")
    assert images[0][1] == f"#1: file {checked[0]['report'].parsed[3].images[0]}" and "file " in counts
    answer = checked[0]["report"].parsed[3].answer
    assert [text for text, label in segments if label == "trained"] == [answer + "<|im_end|>"]
    assert "**Row 3**" in counts and "trained" in counts
    assert "no row 999" in show_row(checked[0], 999, config)[2]


def test_checking_another_file_clears_the_row_panel(tmp_path, config, demo):
    # The Dataset tab kept the previous file's row (its images and text) beside the new file's table.
    from workbench.ui.dataset_tab import build, check

    path = write_jsonl(tmp_path / "other.jsonl", [swift(images=["nope.png"])])
    for outputs in (check(str(path), None, "auto", config), check("", None, "auto", config),
                    check(str(tmp_path / "none.jsonl"), None, "auto", config)):
        images, segments, counts = outputs[-3:]
        assert images == [] and segments == [] and "Click a row" in counts
    import gradio as gr

    from workbench.session import Workbench
    from workbench.ui.app import LaunchOptions, TabContext

    with gr.Blocks() as app:
        build(TabContext(LaunchOptions(dataset=str(demo.train)), Workbench(), gr.State(config)))
    labels = {b["id"]: b.get("props", {}).get("label") for b in app.config["components"]}
    check_events = [d for d in app.config["dependencies"] if len(d["outputs"]) == len(outputs)]
    assert check_events  # Check, upload, image folder, page load: each writes the row panel
    for event in check_events:
        assert [labels[i] for i in event["outputs"][-3:]] == [
            "Row images (caption: where each came from)",
                "As the model sees it (trained tokens highlighted, ↵ a trained newline)", None]


def test_broken_file_lists_problems_and_unusable_file_warns(tmp_path, config):
    from workbench.ui.dataset_tab import check, show_row

    path = write_jsonl(tmp_path / "b.jsonl", [swift(images=["nope.png"]), "{oops"])
    holder, summary, problems, *_ = check(str(path), None, "auto", config)
    assert "**2** rows, **0** valid" in summary and "image-missing 1" in summary
    assert list(problems["row"]) == [1, 2] and list(problems["kind"]) == ["image-missing", "malformed-json"]
    assert "is missing" in show_row(holder, 1, config)[2]
    (tmp_path / "empty.jsonl").write_text("")
    outputs = check(str(tmp_path / "empty.jsonl"), None, "auto", config)
    assert outputs[0] is None and "Cannot read" in outputs[1] and "empty" in outputs[1]
    assert "Give a dataset path" in check("", None, "auto", config)[1]


def test_use_as_training_data_writes_the_config(checked, config):
    from workbench.settings import RunConfig
    from workbench.ui.dataset_tab import use_as_training

    report = checked[0]["report"]
    updated, message = use_as_training(checked[0], "max", config)
    data = RunConfig.from_dict(updated).data
    assert (data.train_path, data.format, data.max_length) == (report.path, "swift", report.stats["max"])
    assert data.trained_tokens == report.stats["trained_max"] > 0 and "trained tokens" in message
    updated, _ = use_as_training(checked[0], "p95", config)
    assert updated["data"]["max_length"] == report.stats["p95"] and config["data"]["max_length"] == 256
    assert updated["data"]["trained_tokens"] == report.stats["trained_p95"]
    assert use_as_training(None, "p95", config)[0] is config


def test_tab_builds_inside_the_app():
    from workbench.ui.app import build_app

    app = build_app()
    kinds = {type(b).__name__ for b in app.blocks.values()}
    assert {"HighlightedText", "BarPlot", "Gallery", "Dataframe"} <= kinds


# ---------------------------------------------------------------------------- issue 10, items 9 to 11
def _zip(path, files: dict):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_uploaded_file_alone_needs_its_image_folder_or_a_zip(tmp_path, config):
    """Gradio copies an upload into its own temporary folder: relative images must still resolve."""
    import shutil

    from data_helpers import png
    from workbench.paths import home
    from workbench.settings import RunConfig
    from workbench.ui.dataset_tab import check, use_as_training

    dataset = tmp_path / "mine"
    png(dataset / "img" / "a.png")
    write_jsonl(dataset / "train.jsonl", [swift(), swift(answer="blue")])
    upload = tmp_path / "gradio-tmp" / "train.jsonl"  # what Gradio hands the handler
    upload.parent.mkdir()
    shutil.copy(dataset / "train.jsonl", upload)

    holder, summary, *_ = check("", str(upload), "auto", config)
    assert "image-missing 2" in summary and "give the image folder" in summary and "upload a .zip" in summary
    holder, summary, *_ = check("", str(upload), "auto", config, str(dataset))
    assert "**2** valid" in summary
    updated, _ = use_as_training(holder, "max", config)
    assert RunConfig.from_dict(updated).data.image_folder == str(dataset.resolve())
    holder, summary, *_ = check("", str(upload), "auto", config, str(tmp_path / "nowhere"))
    assert holder is None and "Image folder" in summary and "is not a folder" in summary

    archive = _zip(tmp_path / "gradio-tmp" / "mine.zip", {
        "mine/train.jsonl": (dataset / "train.jsonl").read_text(),
        "mine/img/a.png": (dataset / "img" / "a.png").read_bytes(), "__MACOSX/mine/._train.jsonl": "x"})
    holder, summary, *_ = check("", str(archive), "auto", config)
    assert "**2** valid" in summary and "Unpacked from mine.zip" in summary
    unpacked = holder["report"].path
    assert unpacked.startswith(str(home() / "datasets")) and unpacked.endswith("mine/train.jsonl")
    again, *_ = check("", str(archive), "auto", config)  # the same zip: the same folder, not unpacked twice
    assert again["report"].path == unpacked


def test_unusable_zips_get_a_sentence(tmp_path, config):
    from workbench.ui.dataset_tab import check

    cases = {
        "escape.zip": ({"../../evil.jsonl": "{}"}, "outside its own folder"),
        "two.zip": ({"a.jsonl": "{}", "b/b.jsonl": "{}"}, "holds 2 dataset files (a.jsonl, b/b.jsonl)"),
        "none.zip": ({"img/a.png": "x"}, "holds no .jsonl or .json dataset file"),
    }
    for name, (files, words) in cases.items():
        holder, summary, *_ = check("", str(_zip(tmp_path / name, files)), "auto", config)
        assert holder is None and words in summary, (name, summary)
    (tmp_path / "not.zip").write_text("hello")
    assert "is not a zip archive" in check("", str(tmp_path / "not.zip"), "auto", config)[1]
    assert not (tmp_path.parent / "evil.jsonl").exists()


def test_problem_rows_show_their_text_and_tags_survive(tmp_path, config):
    from workbench.ui.dataset_tab import check, show_row

    write_jsonl(tmp_path / "p.jsonl", [
        swift(question="<image>Which shape?", answer="a circle", images=["img/missing.png"]),
        swift(question="<image><image>Two tags, one image", answer="square"),
        {"messages": [{"role": "user", "content": "Where is the <image>?"}]},
    ])
    holder, summary, problems, stats, hist, page, pages, table, gallery, *_ = check(str(tmp_path / "p.jsonl"), None,
                                                                                "auto", config)
    assert list(table["status"]) == ["image-missing", "image-count", "no-assistant"]
    assert list(table["user"]) == ["<image>Which shape?", "<image><image>Two tags, one image", "Where is the <image>?"]
    assert list(table["assistant"]) == ["a circle", "square", ""]
    images, segments, counts = show_row(holder, 2, config)
    assert "&lt;image&gt;" in counts and "<image>" not in counts  # Markdown would swallow a bare <image>
    assert "user: <image><image>Two tags, one image\n" in [text for text, _ in segments]
    images, segments, counts = show_row(holder, 1, config)
    assert "is missing" in counts and segments[0] == ("user: <image>Which shape?\n", None)


def test_histogram_labels_are_the_bars_and_the_row_box_starts_at_one(checked):
    """Each bar is a category labelled with its own range; the plot sorts labels as text (sort="x")."""
    from workbench.data.stats import histogram
    from workbench.ui.app import build_app

    hist = checked[4]["value"]
    labels = list(hist["tokens"])
    assert labels == sorted(labels) and all("." not in label for label in labels)
    totals = checked[0]["report"].totals()
    for label, count in zip(labels, hist["rows"]):
        low, _, high = label.strip().partition("-")
        assert count == sum(int(low) <= t <= int(high or low) for t in totals)
    wide = histogram([7, 95, 96, 950, 1200])
    assert list(wide["tokens"]) == sorted(wide["tokens"]) and wide["tokens"].iloc[0] == "   0-49"
    plots = [b for b in build_app().blocks.values() if type(b).__name__ == "BarPlot" and b.title == "Total tokens per row"]
    assert plots[0].sort == "x" and plots[0].y_lim == [0, None]
    rows = [b for b in build_app().blocks.values() if type(b).__name__ == "Number" and b.label == "Row"]
    assert len(rows) == 1 and rows[0].value == 1


def test_page_and_row_zero_answer_with_a_sentence_not_an_error_badge(checked, config):
    """Seen in the browser: 0 typed in Page or Row put Gradio's bare "Error" over the table, the
    gallery and the box itself (its minimum=1 check runs before any handler)."""
    from workbench.ui.app import build_app
    from workbench.ui.dataset_tab import show_row, turn_page

    boxes = {b.label: b for b in build_app().blocks.values() if type(b).__name__ == "Number" and b.label in ("Page", "Row")}
    assert boxes["Page"].preprocess(0) == 0 and boxes["Row"].preprocess(-3) == -3
    assert turn_page(checked[0], 0)[0] == 1 and turn_page(checked[0], -3)[0] == 1
    assert show_row(checked[0], 0, config)[2] == "Rows start at 1: type a row number, or click a row of the table."


def test_a_file_without_bars_hides_the_last_files_histogram(checked, tmp_path, config):
    """Seen in the browser: an empty or unreadable file left the previous file's bars on screen."""
    from workbench.ui.dataset_tab import check

    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "gone.jsonl", [swift(images=["nope.png"])])
    for name in ("empty.jsonl", "gone.jsonl"):
        hist = check(str(tmp_path / name), None, "auto", config)[4]
        assert hist == {"__type__": "update", "visible": False}, name
    assert checked[4]["visible"] is True and len(checked[4]["value"])


def test_rows_longer_than_the_models_context_are_problems(tmp_path, config):
    from data_helpers import png
    from workbench.ui.dataset_tab import check

    png(tmp_path / "img" / "a.png")
    write_jsonl(tmp_path / "long.jsonl", [swift(), swift(question="<image>" + "word " * 5000)])
    roomy = json.loads(json.dumps(config))
    roomy["data"]["max_length"] = 1_000_000  # the flag allows it; the demo model reads 4096 positions
    holder, summary, problems, stats, *_ = check(str(tmp_path / "long.jsonl"), None, "auto", roomy)
    assert "**1** valid" in summary and list(problems["kind"]) == ["too-long"]
    assert "4096 positions model 'demo' can read" in problems["reason"][0] and "4096 positions" in stats


def test_grounding_row_shows_its_boxes_and_the_family_s_box_text(tmp_path, config, monkeypatch):
    """An ms-swift grounding row: the row view's image has the box drawn where the row puts it (red
    outline pixels at the box's edge, none inside), and the trained text is Qwen2-VL's box text."""
    from PIL import Image

    from data_helpers import png
    from workbench.ui.dataset_tab import check, show_row

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    png(tmp_path / "img" / "g.png", 200, 100, color=(255, 255, 255))
    row = {"messages": [{"role": "user", "content": "<image>Find the <ref-object>."},
                        {"role": "assistant", "content": "<ref-object><bbox>"}], "images": ["img/g.png"],
           "objects": {"ref": ["cup", "cup"], "bbox": [[50, 20, 150, 80]]}}
    path = write_jsonl(tmp_path / "ground.jsonl", [row])
    holder = check(str(path), None, "auto", config)[0]
    images, segments, counts = show_row(holder, 1, config)
    assert "1 box(es)" in images[0][1]
    drawn = Image.open(images[0][0]).convert("RGB")
    sx, sy = drawn.width / 200, drawn.height / 100
    edge = drawn.getpixel((int(150 * sx) - 1, int(60 * sy)))  # the right edge, below the label
    inside = drawn.getpixel((int(100 * sx), int(60 * sy)))
    assert edge[0] > 180 and edge[1] < 80 and inside == (255, 255, 255)
    trained = "".join(text for text, label in segments if label == "trained")
    # 200 x 100 image: (50, 20) -> (250, 200), (150, 80) -> (750, 800) in 0-1000
    assert trained == "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(250,200),(750,800)<|box_end|><|im_end|>"


def test_an_unreadable_path_is_said_under_the_check_button_not_in_a_toast(tmp_path, config, monkeypatch):
    """Seen in the browser: the warning toast lay over the Check button for seconds after each bad path."""
    import gradio as gr

    from workbench.ui.dataset_tab import check

    toasts = []
    monkeypatch.setattr(gr, "Warning", lambda *args, **kwargs: toasts.append(args))
    summary = check(str(tmp_path / "nope.jsonl"), None, "auto", config)[1]
    assert "**Cannot read this dataset.**" in summary and "nope.jsonl does not exist" in summary
    assert toasts == []


def test_each_box_is_labelled_with_the_ref_placed_before_it(tmp_path, config, monkeypatch):
    """ms-swift rows pair refs and boxes in the text, with more refs than boxes or one ref for many boxes."""
    from data_helpers import png
    from workbench.ui.dataset_tab import check

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    png(tmp_path / "img" / "g.png", 200, 100)
    paired = {"messages": [{"role": "user", "content": "<image>Where are the <ref-object> and the <ref-object>?"},
                           {"role": "assistant", "content": "<ref-object><bbox> and <ref-object><bbox>"}],
              "images": ["img/g.png"],
              "objects": {"ref": ["cup", "fork", "cup", "fork"], "bbox": [[10, 10, 50, 50], [60, 10, 90, 40]]}}
    every = {"messages": [{"role": "user", "content": "<image>Find every <ref-object>."},
                          {"role": "assistant", "content": "<bbox><bbox>"}], "images": ["img/g.png"],
             "objects": {"ref": ["sheep"], "bbox": [[10, 10, 50, 50], [60, 10, 90, 40]]}}
    report = check(str(write_jsonl(tmp_path / "g.jsonl", [paired, every])), None, "auto", config)[0]["report"]
    assert [b.label for b in report.parsed[1].boxes] == ["cup", "fork"]
    assert [b.label for b in report.parsed[2].boxes] == ["sheep", "sheep"]


def test_trained_newlines_are_visible_in_the_row_view(tmp_path, config, monkeypatch):
    """An answer starting with "\\n\\n" trains those newlines; the highlighted text showed them as nothing."""
    from data_helpers import png
    from workbench.ui.dataset_tab import TRAINED_NEWLINE, check, show_row

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    png(tmp_path / "img" / "a.png")
    answer = "\n\n- red\n- white"
    holder = check(str(write_jsonl(tmp_path / "nl.jsonl", [swift(answer=answer)])), None, "auto", config)[0]
    segments = show_row(holder, 1, config)[1]
    trained = "".join(text for text, label in segments if label == "trained")
    assert trained == answer.replace("\n", TRAINED_NEWLINE + "\n") + "<|im_end|>"
    assert all(TRAINED_NEWLINE not in text for text, label in segments if label != "trained")


def test_row_images_are_shown_whole():
    """A box at an image's edge must not be cropped away by the gallery (Gradio's default fit is cover)."""
    from workbench.ui.app import build_app

    gallery = next(b for b in build_app().blocks.values() if getattr(b, "elem_id", None) == "dataset-row-images")
    assert gallery.object_fit == "contain"
