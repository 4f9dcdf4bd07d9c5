"""Each peer format read as-is into the one Sample type; whole-file errors are one UserError."""

import json

import pytest

from data_helpers import png, swift, write_jsonl
from workbench.data.formats import load_samples
from workbench.errors import UserError


@pytest.fixture
def folder(tmp_path):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png", 84, 56)
    return tmp_path


def test_swift_jsonl_and_json_list_resolve_relative_and_absolute_images(folder):
    absolute = str(folder / "img" / "b.png")
    records = [swift(), swift("<image><image>Compare", "same", ["img/a.png", absolute], system="Be brief.")]
    result = load_samples(write_jsonl(folder / "d.jsonl", records))
    assert (result.format, result.rows, len(result.samples), result.problems) == ("swift", 2, 2, [])
    assert result.samples[0].images == [str(folder / "img" / "a.png")]
    assert result.samples[1].images[1] == absolute
    assert [t.role for t in result.samples[1].turns] == ["system", "user", "assistant"]
    (folder / "d.json").write_text(json.dumps(records))
    as_list = load_samples(folder / "d.json")
    assert [s.row for s in as_list.samples] == [1, 2] and as_list.samples[1].answer == "same"


def test_classic_sharegpt_from_value(folder):
    record = {"conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "<image>Color?"}, {"from": "gpt", "value": "red"}],
              "images": ["img/a.png"]}
    result = load_samples(write_jsonl(folder / "s.jsonl", [record]))
    assert result.format == "sharegpt" and not result.problems
    sample = result.samples[0]
    assert [(t.role, t.text) for t in sample.turns] == [("system", "Be brief."), ("user", "<image>Color?"),
                                                       ("assistant", "red")]
    assert sample.messages()[1]["content"][0] == {"type": "image", "image": str(folder / "img" / "a.png")}


def test_sharegpt_with_role_content_messages_when_chosen(folder):
    result = load_samples(write_jsonl(folder / "m.jsonl", [swift()]), "sharegpt")
    assert result.format == "sharegpt" and result.samples[0].answer == "red"


def test_dataset_info_columns_and_tags_are_used(folder):
    info = {"mine": {"file_name": "custom.json", "formatting": "sharegpt",
                     "columns": {"messages": "dialog", "images": "pics", "system": "sys"},
                     "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "person",
                              "assistant_tag": "bot"}},
            "other": {"file_name": "elsewhere.json", "formatting": "sharegpt"}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    record = {"dialog": [{"speaker": "person", "text": "<image>Color?"}, {"speaker": "bot", "text": "red"},
                         {"speaker": "robot", "text": "?"}],
              "pics": ["img/a.png"], "sys": "Answer in one word."}
    ok = dict(record, dialog=record["dialog"][:2])
    (folder / "custom.json").write_text(json.dumps([ok, record]))
    result = load_samples(folder / "custom.json")
    assert result.format == "sharegpt" and len(result.samples) == 1
    assert [t.role for t in result.samples[0].turns] == ["system", "user", "assistant"]
    assert result.samples[0].turns[0].text == "Answer in one word."
    assert result.problems[0].row == 2 and result.problems[0].kind == "unknown-role"
    assert "'robot'" in result.problems[0].reason and "'person'" in result.problems[0].reason
    # pointing at dataset_info.json itself works when it names exactly one file present
    assert len(load_samples(folder / "dataset_info.json").samples) == 1


def test_dataset_info_with_other_formatting_is_refused(folder):
    (folder / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "alp.json", "formatting": "openai"}}))
    (folder / "alp.json").write_text(json.dumps([swift()]))
    with pytest.raises(UserError, match="'openai' formatting"):
        load_samples(folder / "alp.json")


def test_dataset_info_alpaca_columns_rename_the_fields(folder):
    """LLaMA-Factory's default formatting (alpaca) with its dataset_info.json 'columns' mapping."""
    (folder / "dataset_info.json").write_text(json.dumps({"a": {
        "file_name": "alp2.json", "columns": {"prompt": "question", "response": "answer", "images": "pictures"}}}))
    (folder / "alp2.json").write_text(json.dumps([{"question": "<image>Color?", "answer": "red",
                                                   "pictures": ["img/a.png"]}]))
    result = load_samples(folder / "alp2.json")
    assert result.format == "alpaca" and not result.problems
    sample = result.samples[0]
    assert [(t.role, t.text) for t in sample.turns] == [("user", "<image>Color?"), ("assistant", "red")]
    assert sample.images == [str(folder / "img" / "a.png")]


def test_hf_content_parts_with_paths_or_images_list(folder):
    parts = {"messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},
                                                       {"type": "text", "text": "Color?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}
    no_path = {"messages": [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"},
                                                         {"type": "text", "text": "B"}, {"type": "image"}]},
                            {"role": "assistant", "content": "both"}], "images": ["img/a.png", "img/b.png"]}
    extra = dict(no_path, images=["img/a.png", "img/b.png", "img/a.png"])
    result = load_samples(write_jsonl(folder / "p.jsonl", [parts, no_path, extra]))
    assert result.format == "messages"
    assert [s.row for s in result.samples] == [1, 2]
    assert result.samples[0].turns[0].text == "<image>Color?"
    assert result.samples[1].turns[0].text == "A<image>B<image>"
    assert result.samples[1].images == [str(folder / "img" / "a.png"), str(folder / "img" / "b.png")]
    assert result.problems[0].row == 3 and result.problems[0].kind == "image-count"


def test_explicit_format_overrides_detection(folder):
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    result = load_samples(write_jsonl(folder / "c.jsonl", [record]), "swift")
    assert not result.samples and result.problems[0].kind == "missing-field"


@pytest.mark.parametrize("content, words", [
    (b"", "empty"), (b"  \n\n", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary"),
    ("caf\u00e9".encode("latin-1") + b"\n", "not UTF-8"), (b"hello world\n", "not JSON"),
    (b"[{\"messages\": 1},", "not valid JSON"), (b"{nope\n{also nope\n", "not JSON"),
])
def test_unusable_files_raise_one_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=words):
        load_samples(path)


def test_a_zip_given_where_a_dataset_file_goes_says_how_to_unpack_it(tmp_path):
    """Seen as a new user: `train --dataset data.zip` (which `data check` accepts) said "binary, not JSON text"."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "shapes.zip", "w") as archive:
        archive.writestr("shapes/data.jsonl", "{}\n")
    with pytest.raises(UserError, match=r"is a \.zip archive: unpack it with `python -m workbench data check .*shapes\.zip`"):
        load_samples(tmp_path / "shapes.zip")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_samples(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is a folder"):
        load_samples(tmp_path)
