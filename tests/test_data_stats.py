"""Visual tokens against hand-computed values; text tokens against the processor; preview masking."""

import pytest

from data_helpers import png, swift, write_jsonl
from workbench.data.stats import histogram, summarize, visual_token_count

DEMO_PIXELS = dict(min_pixels=3136, max_pixels=112 * 112)


@pytest.mark.parametrize("height, width, min_pixels, max_pixels, tokens", [
    (56, 56, 3136, 12544, 4),           # already multiples of 28: 2 x 2
    (56, 84, 3136, 12544, 6),           # 2 x 3
    (100, 100, 3136, 1003520, 16),      # rounds to 112 x 112: 4 x 4
    (1000, 1000, 3136, 1003520, 1225),  # 1008^2 > max -> scaled down, floor: 980 x 980 = 35 x 35
    (1000, 2000, 3136, 1003520, 1250),  # 700 x 1400 after scaling: 25 x 50
    (1000, 1000, 3136, 12544, 16),      # a small max_pixels caps it at 112 x 112: 4 x 4
    (10, 10, 3136, 1003520, 4),         # below min_pixels -> scaled up to 56 x 56: 2 x 2
    (28, 280, 3136, 1003520, 10),       # 1 x 10
])
def test_visual_token_count_by_hand(height, width, min_pixels, max_pixels, tokens):
    assert visual_token_count(height, width, min_pixels, max_pixels) == tokens


def test_visual_tokens_match_the_image_processor(demo):
    from transformers import AutoProcessor
    from PIL import Image

    image_processor = AutoProcessor.from_pretrained(demo.model).image_processor
    for (h, w), (lo, hi) in [((56, 84), (3136, 12544)), ((300, 200), (3136, 1003520)), ((97, 513), (3136, 50176))]:
        out = image_processor(images=[Image.new("RGB", (w, h))], size={"shortest_edge": lo, "longest_edge": hi},
                              return_tensors="pt")
        assert int(out["image_grid_thw"][0].prod()) // 4 == visual_token_count(h, w, lo, hi)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    png(folder / "img" / "a.png", 56, 84)
    png(folder / "img" / "b.png", 140, 100)
    rows = [swift(), swift("<image>and <image> compare them, please", "the second one is larger",
                           ["img/a.png", "img/b.png"], system="You compare pictures."),
            {"messages": [{"role": "user", "content": "no picture: what is 2+2?"},
                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "<image>now?"},
                          {"role": "assistant", "content": "red"}], "images": ["img/b.png"]}]
    return write_jsonl(folder / "mixed.jsonl", rows)


@pytest.fixture(scope="module")
def encoder(demo):
    from transformers import AutoProcessor

    from workbench.data.collate import SampleEncoder

    return SampleEncoder(AutoProcessor.from_pretrained(demo.model), 4096, **{k: v for k, v in DEMO_PIXELS.items()})


def test_row_lengths_equal_the_processor_input_ids(mixed, encoder, demo):
    from workbench.data.validation import check_dataset

    for path in (mixed, demo.train):
        report = check_dataset(path, tokenizer=encoder.processor.tokenizer, **DEMO_PIXELS)
        assert report.stats["text_tokens"] == "exact" and report.valid == report.rows
        for sample in report.samples[:12]:
            item = encoder.encode(sample)
            length = report.lengths[sample.row]
            assert length.total == item["input_ids"].shape[0], sample.row
            if "image_grid_thw" in item:
                assert length.visual_tokens == [int(g.prod()) // 4 for g in item["image_grid_thw"]]


def test_trained_tokens_per_row_equal_the_labels_training_uses(mixed, encoder, demo, monkeypatch):
    from workbench.data import stats
    from workbench.data.formats import load_samples
    from workbench.data.validation import check_dataset

    samples = load_samples(mixed).samples + load_samples(demo.train).samples[:12]
    counted = stats.TextTokenCounter(encoder.processor.tokenizer).trained(samples)
    labels = [int((encoder.encode(s)["labels"] != -100).sum()) for s in samples]
    assert counted == labels and max(labels) > 2
    report = check_dataset(demo.train, tokenizer=encoder.processor.tokenizer, **DEMO_PIXELS)
    assert 2 <= report.stats["trained_p95"] <= report.stats["trained_max"] < report.stats["p50"]
    monkeypatch.setattr(stats, "EXACT_BYTES", 0)  # estimated at the measured bytes per token
    estimated = check_dataset(demo.train, tokenizer=encoder.processor.tokenizer, **DEMO_PIXELS)
    assert abs(estimated.stats["trained_max"] - report.stats["trained_max"]) <= 2


def test_estimate_keeps_max_and_too_long_exact(demo, encoder, monkeypatch):
    from workbench.data import stats
    from workbench.data.validation import check_dataset

    exact = check_dataset(demo.train, tokenizer=encoder.processor.tokenizer, max_length=40, **DEMO_PIXELS)
    monkeypatch.setattr(stats, "EXACT_BYTES", 0)
    estimated = check_dataset(demo.train, tokenizer=encoder.processor.tokenizer, max_length=40, **DEMO_PIXELS)
    assert estimated.stats["text_tokens"].startswith("estimated")
    assert estimated.stats["max"] == exact.stats["max"]
    assert [p.row for p in estimated.problems] == [p.row for p in exact.problems] != []
    assert abs(estimated.stats["p50"] - exact.stats["p50"]) <= 0.15 * exact.stats["p50"]
    no_tokenizer = check_dataset(demo.train, **DEMO_PIXELS)
    assert no_tokenizer.stats["text_tokens"].startswith("estimated (no tokenizer")


def test_summary_and_histogram():
    s = summarize(list(range(1, 101)), [10] * 100)
    assert (s["p50"], s["p95"], s["max"], s["rows"]) == (50, 95, 100, 100)
    assert s["visual_share"] == round(1000 / 5050, 4)
    h = histogram([10, 10, 20, 30, 400], bins=4)
    assert int(h["rows"].sum()) == 5 and list(h["start"]) == sorted(h["start"]) and h["start"].iloc[0] <= 10
    assert summarize([], [])["max"] == 0 and histogram([]).empty


def test_rendered_row_marks_only_assistant_tokens(mixed, encoder):
    from workbench.data.formats import load_samples
    from workbench.data.preview import render_row, row_markdown_summary

    sample = load_samples(mixed).samples[2]
    view = render_row(sample, encoder)
    trained = "".join(text for text, label in view.segments if label == "trained")
    assert trained == "4<|im_end|>red<|im_end|>"
    masked = "".join(text for text, label in view.segments if label is None)
    assert "no picture: what is 2+2?" in masked and "now?" in masked and "You are a helpful assistant." in masked
    assert [text for text, label in view.segments if label == "image"] == ["[12 visual tokens]"]  # 100 x 140 -> 84 x 112 under 12544
    assert view.visual_tokens == [12] and view.total_tokens == encoder.encode(sample)["input_ids"].shape[0]
    assert view.trained_tokens == sum(1 for label in encoder.encode(sample)["labels"].tolist() if label != -100)
    assert f"{view.total_tokens} tokens" in row_markdown_summary(view)


def test_preview_pages_with_thumbnails(demo, encoder):
    from workbench.data.preview import preview_page, rows_table
    from workbench.data.validation import check_dataset

    report = check_dataset(demo.train, tokenizer=encoder.processor.tokenizer, **DEMO_PIXELS)
    table = rows_table(report)
    assert len(table) == report.rows and list(table.columns[:3]) == ["row", "status", "images"]
    page = preview_page(report, table, 2, page_size=20)
    assert (page.number, page.pages) == (2, 16) and list(page.table["row"]) == list(range(21, 41))
    assert len(page.thumbnails) == 20 and page.thumbnails[0][1] == "row 21"
    from PIL import Image

    with Image.open(page.thumbnails[0][0]) as image:
        assert max(image.size) <= 96
    assert preview_page(report, table, 999).number == 16
