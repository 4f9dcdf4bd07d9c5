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
    holder, summary, problems, stats, hist, page, pages, table, gallery = checked
    assert "**320** rows, **320** valid, **0** with problems" in summary
    assert problems.empty and int(hist["rows"].sum()) == 320
    assert "p95" in stats and "visual share" in stats
    assert (page, pages) == (1, "of 16") and list(table["row"][:3]) == [1, 2, 3] and len(gallery) == 20

    from workbench.ui.dataset_tab import turn_page

    page, pages, table, gallery = turn_page(holder, 16)
    assert page == 16 and list(table["row"])[-1] == 320 and gallery[-1][1] == "row 320"
    assert turn_page(holder, 0)[0] == 1


def test_show_row_highlights_the_answer(checked, config):
    from workbench.ui.dataset_tab import show_row

    images, segments, counts = show_row(checked[0], 3, config)
    assert len(images) == 1 and images[0].endswith(".png")
    answer = checked[0]["report"].parsed[3].answer
    assert [text for text, label in segments if label == "trained"] == [answer + "<|im_end|>"]
    assert "**Row 3**" in counts and "trained" in counts
    assert "no row 999" in show_row(checked[0], 999, config)[2]


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
