"""Parquet files, Arrow files and ``datasets`` folders (written here with pyarrow in the layouts the Hub,
``datasets`` and TRL write) read into the same Samples as a JSONL file, images included."""

import json
import os
import sys

import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from conftest import ROOT  # noqa: E402
from data_helpers import png, swift, write_jsonl  # noqa: E402
from workbench.data.formats import load_samples, read_records  # noqa: E402
from workbench.errors import UserError  # noqa: E402

# What ``datasets`` stores an Image feature as, and the features JSON it writes beside it.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SWIFT = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                   ("images", pa.list_(IMAGE))])
SWIFT_FEATURES = {"messages": {"feature": {"role": {"dtype": "string", "_type": "Value"},
                                           "content": {"dtype": "string", "_type": "Value"}}, "_type": "List"},
                  "images": {"feature": {"_type": "Image"}, "_type": "List"}}
PART = pa.struct([("index", pa.int64()), ("text", pa.string()), ("type", pa.string())])
TRL = pa.schema([("messages", pa.list_(pa.struct([("content", pa.list_(PART)), ("role", pa.string())]))),
                 ("images", pa.list_(IMAGE))])


def png_bytes(tmp_path, width, height, color=(200, 30, 30)) -> bytes:
    return png(tmp_path / f"src-{width}x{height}-{color[0]}.png", width, height, color).read_bytes()


def with_features(schema, features):
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def swift_row(question, answer, images):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": images}


def trl_row(question, answer, images):
    parts = [{"index": i, "text": None, "type": "image"} for i in range(len(images))]
    parts.append({"index": None, "text": question, "type": "text"})
    return {"messages": [{"content": parts, "role": "user"},
                         {"content": [{"index": None, "text": answer, "type": "text"}], "role": "assistant"}],
            "images": images}


def save_to_disk(folder, schema, shards, features):
    """The folder ``Dataset.save_to_disk`` writes: Arrow IPC stream shards, state.json, dataset_info.json."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = with_features(schema, features)
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, rows in zip(names, shards):
        with pa.ipc.new_stream(str(folder / name), schema) as writer:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features,
                                                          "homepage": "", "license": ""}))
    return folder


def data_check(path, capsys, status):
    """``python -m workbench data check PATH --json`` (its main, in this process): the JSON line."""
    from workbench.cli.main import main

    capsys.readouterr()
    assert main(["data", "check", str(path), "--json"]) == status
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def tokens(height, width):
    """Visual tokens of an image already a multiple of 28 inside the default pixel range: one per 28x28."""
    return (height // 28) * (width // 28)


def test_parquet_with_image_structs_checks_valid_with_each_images_visual_tokens(tmp_path, capsys):
    from qwen_vl_utils import smart_resize

    a, b = png_bytes(tmp_path, 56, 84), png_bytes(tmp_path, 140, 112, (10, 200, 10))
    rows = [swift_row("<image>What color?", "red", [{"bytes": a, "path": "a.png"}]),
            swift_row("<image><image>Compare.", "red, then green", [{"bytes": a, "path": None},
                                                                   {"bytes": b, "path": "b.png"}])]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=with_features(SWIFT, SWIFT_FEATURES)), path)

    out = data_check(path, capsys, status=0)
    assert (out["rows"], out["valid"], out["problems"]) == (2, 2, [])
    if "per_row" in out:
        visual = [r["visual_tokens"] for r in out["per_row"]]
        assert [v if isinstance(v, int) else sum(v) for v in visual] == [tokens(84, 56), tokens(84, 56) + tokens(112, 140)]

    from workbench.data.validation import check_dataset

    report = check_dataset(path, model="qwen2-vl-7b-instruct")
    assert smart_resize(84, 56, 28) == (84, 56) and smart_resize(112, 140, 28) == (112, 140)
    assert report.lengths[1].visual_tokens == [6] == [tokens(84, 56)]
    assert report.lengths[2].visual_tokens == [6, 20] == [tokens(84, 56), tokens(112, 140)]
    first, second = report.samples
    assert first.images[0] == second.images[0]  # the same bytes: one cached file
    cached = [open(p, "rb").read() for p in second.images]
    assert cached == [a, b] and all(p.endswith(".png") for p in second.images)
    assert str(second.images[1]).startswith(os.environ["WORKBENCH_HOME"])
    assert [t.text for t in second.turns] == ["<image><image>Compare.", "red, then green"]


def test_datasets_folder_trl_layout_rows_count_across_shards_in_order(tmp_path):
    red, green = png_bytes(tmp_path, 56, 56), png_bytes(tmp_path, 84, 56, (0, 255, 0))
    png(tmp_path / "ds" / "img" / "c.png", 28, 56)
    features = {"messages": {"feature": {"content": {"feature": {"index": {"dtype": "int64", "_type": "Value"},
                                                                 "text": {"dtype": "string", "_type": "Value"},
                                                                 "type": {"dtype": "string", "_type": "Value"}},
                                                     "_type": "List"},
                                         "role": {"dtype": "string", "_type": "Value"}}, "_type": "List"},
                "images": {"feature": {"_type": "Image"}, "_type": "List"}}
    shards = [[trl_row(f"Q{i}", f"A{i}", [{"bytes": red, "path": None}]) for i in (1, 2, 3)],
              [trl_row("Q4", "A4", [{"bytes": green, "path": "g.png"}]),
               trl_row("Q5", "A5", [{"bytes": None, "path": "img/c.png"}])]]  # a path only: the folder's file
    folder = save_to_disk(tmp_path / "ds", TRL, shards, features)

    result = load_samples(folder)
    assert result.problems == [] and result.format == "messages"
    assert [s.row for s in result.samples] == [1, 2, 3, 4, 5]
    assert [s.answer for s in result.samples] == ["A1", "A2", "A3", "A4", "A5"]
    assert result.samples[3].turns[0].text == "<image>Q4"
    assert open(result.samples[3].images[0], "rb").read() == green
    assert result.samples[4].images == [str(folder / "img" / "c.png")]
    # the dataset_info.json save_to_disk wrote names the same folder
    assert [s.answer for s in load_samples(folder / "dataset_info.json").samples] == ["A1", "A2", "A3", "A4", "A5"]
    # one shard alone reads as its own table; its relative paths start at its folder
    alone = load_samples(folder / "data-00001-of-00002.arrow")
    assert [s.answer for s in alone.samples] == ["A4", "A5"] and alone.samples[1].images == [str(folder / "img" / "c.png")]


def test_struct_nulls_are_dropped_and_other_values_are_plain_python(tmp_path):
    rows = [swift_row("<image>Where?", "here", [{"bytes": None, "path": "img/a.png"}])]
    png(tmp_path / "img" / "a.png")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SWIFT), path)  # no features: the struct shape decides
    [(row, record, error)] = list(read_records(path))
    assert (row, error) == (1, None)
    assert record == swift("<image>Where?", "here", [str(tmp_path / "img" / "a.png")])
    [(_, trl, _)] = list(read_records(_parquet(tmp_path / "trl.parquet", TRL, [trl_row("Q", "A", [])])))
    assert trl["messages"][0]["content"] == [{"text": "Q", "type": "text"}]  # as the JSON line had it
    # an Audio feature has the same struct: kept as its own file for the row's parser to refuse, not an image error
    sound = pa.schema([("messages", SWIFT.field("messages").type), ("audios", pa.list_(IMAGE))])
    sound = with_features(sound, {"audios": {"feature": {"_type": "Audio"}, "_type": "List"}})
    [(_, spoken, error)] = list(read_records(_parquet(tmp_path / "a.parquet", sound, [
        {**swift_row("<audio>Say?", "hi", None), "audios": [{"bytes": b"RIFF....WAVE", "path": "x.wav"}]}])))
    assert error is None and spoken["audios"][0].endswith(".wav")
    assert open(spoken["audios"][0], "rb").read() == b"RIFF....WAVE"


def test_image_structs_inside_content_parts_and_the_cauldron_layout(tmp_path):
    red = png_bytes(tmp_path, 56, 56)
    part = pa.struct([("type", pa.string()), ("text", pa.string()), ("image", IMAGE)])
    qwen = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(part))])))])
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": {"bytes": red, "path": "r.png"}},
                                                     {"type": "text", "text": "Color?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}
    result = load_samples(_parquet(tmp_path / "qwen.parquet", qwen, [row]))
    [sample] = result.samples
    assert result.format == "messages" and sample.turns[0].text == "<image>Color?"
    assert open(sample.images[0], "rb").read() == red

    texts = pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))
    cauldron = pa.schema([("images", pa.list_(IMAGE)), ("texts", texts)])
    rows = [{"images": [{"bytes": red, "path": None}],
             "texts": [{"user": "Color?", "assistant": "red", "source": "synthetic"}]}]
    [(_, record, _)] = list(read_records(_parquet(tmp_path / "cauldron.parquet", cauldron, rows)))
    assert record["texts"] == rows[0]["texts"] and open(record["images"][0], "rb").read() == red
    assert os.path.basename(record["images"][0]) == os.path.basename(sample.images[0])  # named by content


def _parquet(path, schema, rows, **kwargs):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, **kwargs)
    return path


def test_unreadable_image_bytes_are_a_problem_naming_the_row(tmp_path, capsys):
    good = png_bytes(tmp_path, 56, 56)
    rows = [swift_row("<image>A?", "a", [{"bytes": good, "path": None}]),
            swift_row("<image><image>B?", "b", [{"bytes": good, "path": None}, {"bytes": b"not an image", "path": None}]),
            swift_row("<image>C?", "c", [{"bytes": good, "path": None}]),
            swift_row("<image>D?", "d", [{"bytes": None, "path": None}])]
    path = _parquet(tmp_path / "bad.parquet", SWIFT, rows)
    result = load_samples(path)
    assert [s.row for s in result.samples] == [1, 3]
    bad, empty = result.problems
    assert (bad.row, bad.kind, empty.row) == (2, "image-unreadable", 4)
    assert "column 'images' entry 2 holds 12 bytes that are not an image" in bad.reason
    assert "column 'images' entry 1 has neither image bytes nor a path" in empty.reason

    out = data_check(path, capsys, status=1)
    assert (out["rows"], out["valid"]) == (4, 2)
    assert [p["row"] for p in out["problems"]] == [2, 4]


def test_a_full_disk_for_the_image_cache_is_one_sentence(tmp_path, monkeypatch):
    import errno
    import pathlib

    fresh = png_bytes(tmp_path, 28, 28, (1, 2, 3))
    path = _parquet(tmp_path / "full.parquet", SWIFT, [swift_row("<image>A?", "a", [{"bytes": fresh, "path": None}])])

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(UserError, match="cannot be written to .*No space left on device.*free some disk space"):
        load_samples(path)


def test_dispatch_is_by_content_not_by_name(tmp_path):
    table = _parquet(tmp_path / "data.jsonl", SWIFT, [swift_row("hi", "yo", [])])  # a parquet named .jsonl
    assert [s.answer for s in load_samples(table).samples] == ["yo"]
    text = write_jsonl(tmp_path / "looks.parquet", [swift("What color?", images=[])])  # JSONL named .parquet
    assert [s.answer for s in load_samples(text).samples] == ["red"]
    arrow = tmp_path / "file.bin"
    with pa.ipc.new_file(str(arrow), SWIFT) as writer:  # the Arrow IPC *file* format
        writer.write_table(pa.Table.from_pylist([swift_row("hi", "file", [])], schema=SWIFT))
    assert [s.answer for s in load_samples(arrow).samples] == ["file"]
    png(tmp_path / "img" / "x.png")
    with pytest.raises(UserError, match="is a folder, not a dataset file"):  # a folder of images is no table
        load_samples(tmp_path / "img")


def test_folder_of_parquet_shards_and_folders_that_are_refused(tmp_path):
    shards = tmp_path / "data"
    shards.mkdir()
    for i, answers in enumerate([["1", "2"], ["3"]]):
        _parquet(shards / f"train-{i:05d}-of-00002.parquet", SWIFT, [swift_row("q", a, []) for a in answers])
    (shards / "README.md").write_text("# card")
    assert [(s.row, s.answer) for s in load_samples(shards).samples] == [(1, "1"), (2, "2"), (3, "3")]

    _parquet(shards / "test-00000-of-00001.parquet", SWIFT, [swift_row("q", "t", [])])
    with pytest.raises(UserError, match="splits test, train"):
        load_samples(shards)

    (shards / "test-00000-of-00001.parquet").unlink()
    (shards / "notes.jsonl").write_text("{}\n")  # a folder of shards and other data files: which one is meant?
    with pytest.raises(UserError, match="holds table shards .* and other dataset files \\(notes.jsonl\\)"):
        load_samples(shards)

    whole = tmp_path / "dict"
    save_to_disk(whole / "train", SWIFT, [[swift_row("q", "a", [])]], SWIFT_FEATURES)
    (whole / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(UserError, match=f"splits train: pass one split's folder, e.g. {whole / 'train'}"):
        load_samples(whole)


def test_a_big_table_streams_in_bounded_memory(tmp_path):
    rows = 50_000
    text = [os.urandom(400).hex() for _ in range(64)]  # 800 characters that compress poorly
    table = pa.table({"messages": [[{"role": "user", "content": f"q{i}"},
                                    {"role": "assistant", "content": text[i % 64]}] for i in range(rows)]})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=1000)  # what ``datasets`` writes: row groups, not one blob
    whole = table.nbytes
    assert whole > 40e6
    del table
    # A fresh process: Arrow's pool remembers its peak for the process's life (writing the table above counts).
    script = ("import json, sys, tracemalloc, pyarrow as pa\n"
              "from workbench.data.formats import read_records\n"
              "tracemalloc.start()\n"
              "last = seen = 0\n"
              "for row, record, error in read_records(sys.argv[1]):\n"
              "    assert error is None and len(record['messages']) == 2\n"
              "    seen += 1; last = row\n"
              "print(json.dumps([seen, last, pa.default_memory_pool().max_memory(), tracemalloc.get_traced_memory()[1]]))")
    import subprocess

    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    seen, last, arrow_peak, python_peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen, last) == (rows, rows)
    # measured: 3.6 MB of Arrow buffers and 2.4 MB of Python objects (imports included) for a 42 MB table; reading it whole
    # holds 45 MB in Arrow and about 150 MB as Python rows
    assert arrow_peak < whole / 4, (arrow_peak, whole)
    assert python_peak < whole / 10, (python_peak, whole)


def test_dataset_tab_previews_a_parquet_row_with_its_image(tmp_path, demo_config):
    from PIL import Image

    from workbench.ui.dataset_tab import check, show_row

    config = demo_config.to_dict()
    blue = png_bytes(tmp_path, 56, 84, (0, 0, 255))
    path = _parquet(tmp_path / "tab.parquet", SWIFT, [swift_row("<image>What color?", "blue", [{"bytes": blue,
                                                                                               "path": "x.png"}])])
    holder, summary, problems, *_, gallery, _, _, _ = check(str(path), None, "auto", config)
    assert "**1** rows, **1** valid" in summary and problems.empty and len(gallery) == 1
    images, segments, counts = show_row(holder, 1, config)
    [(shown, caption)] = images
    with Image.open(shown) as image:
        assert image.size == (56, 84) and image.getpixel((0, 0))[:3] == (0, 0, 255)
    assert [text for text, label in segments if label == "trained"] == ["blue<|im_end|>"]
