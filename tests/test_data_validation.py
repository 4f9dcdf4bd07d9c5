"""Every problem kind names its row (the JSONL line number) and never raises; CLI exit codes."""

import json

import pytest

from conftest import run_cli
from data_helpers import png, png_claiming, swift, write_jsonl
from workbench.data.validation import check_dataset


@pytest.fixture
def broken(tmp_path):
    png(tmp_path / "img" / "a.png")
    png_claiming(tmp_path / "img" / "bomb.png", 20000, 20000)
    png_claiming(tmp_path / "img" / "big.png", 10000, 9000)
    png(tmp_path / "img" / "thin.png", 2, 500)
    (tmp_path / "img" / "text.png").write_text("not an image")
    lines = [
        swift(),                                                    # 1 ok
        "{\"messages\": [",                                         # 2 malformed-json
        "",                                                         # 3 blank: skipped, not a row
        json.dumps([1, 2]),                                         # 4 wrong-type
        swift() | {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 5
        swift() | {"messages": [{"role": "user", "content": "<image>hi"}]},                                 # 6 no assistant
        swift(answer="   "),                                        # 7 empty-content
        swift(question="no tag here"),                              # 8 ok: ms-swift puts untagged images first
        swift(question="<image><image>two tags"),                   # 9 image-count
        swift(images=["img/missing.png"]),                          # 10 image-missing
        swift(images=["img/text.png"]),                             # 11 image-unreadable
        swift(images=["img/bomb.png"]),                             # 12 image-too-large (Pillow refuses)
        swift(images=["img/big.png"]),                              # 13 image-too-large (our limit)
        swift(images=["img/thin.png"]),                             # 14 image-shape (ratio > 200)
        swift(question="<image>" + "word " * 400),                  # 15 too-long
        "null",                                                     # 16 wrong-type
        swift(answer=["not", "text"]),                              # 17 wrong-type content
    ]
    return write_jsonl(tmp_path / "broken.jsonl", lines)


EXPECTED = {2: "malformed-json", 4: "wrong-type", 5: "unknown-role", 6: "no-assistant", 7: "empty-content",
            9: "image-count", 10: "image-missing", 11: "image-unreadable",
            12: "image-too-large", 13: "image-too-large", 14: "image-shape", 15: "too-long", 16: "wrong-type",
            17: "wrong-type"}


def test_each_problem_kind_names_its_line(broken):
    report = check_dataset(broken, max_length=200, min_pixels=3136, max_pixels=12544)
    assert {p.row: p.kind for p in report.problems} == EXPECTED
    assert report.rows == 16 and report.valid == 2 and [s.row for s in report.samples] == [1, 8]
    assert report.samples[1].turns[0].text == "<image>no tag here"
    reasons = {p.row: p.reason for p in report.problems}
    assert "2 <image> tag(s) but 1 image(s)" in reasons[9]
    assert "missing.png is missing" in reasons[10]
    assert "robot" in reasons[5] and "max_length 200" in reasons[15]
    assert report.problems_by_kind()["image-count"] == 1


def test_junk_records_never_raise(tmp_path):
    junk = ["1", "\"text\"", "{}", "{\"messages\": {}}", "{\"messages\": [null]}", "{\"messages\": [[]]}",
            "{\"messages\": [{\"role\": \"user\"}]}", "{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}",
            "{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}], \"images\": 5}", "[[[[" * 50]
    report = check_dataset(write_jsonl(tmp_path / "junk.jsonl", junk))
    assert report.rows == len(junk) and report.valid == 0
    assert [p.row for p in report.problems] == list(range(1, len(junk) + 1))
    assert all(p.reason for p in report.problems)


def test_check_cli_exit_codes_and_json(broken, tmp_path, capsys):
    from workbench.cli.main import main

    png(tmp_path / "img" / "a.png")
    good = write_jsonl(tmp_path / "good.jsonl", [swift(), swift(answer="blue")])
    assert main(["data", "check", str(good), "--json", "--max-pixels", "12544"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 2 and out["valid"] == 2 and out["problems"] == []
    assert out["stats"]["max"] > 4 and 0 < out["stats"]["visual_share"] < 1

    assert main(["data", "check", str(broken), "--json", "--max-length", "200", "--max-pixels", "12544"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 16 and out["valid"] == 2
    assert [p["row"] for p in out["problems"]] == sorted(EXPECTED)
    assert all(set(p) >= {"row", "reason"} for p in out["problems"])

    assert main(["data", "check", str(broken)]) == 1
    text = capsys.readouterr().out
    assert "16 rows, 3 valid" in text and "row 2: line is not valid JSON" in text  # no --max-length: 15 is fine

    assert main(["data", "check", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bin.jsonl").write_bytes(b"\x00\x01\x02")
    assert main(["data", "check", str(tmp_path / "bin.jsonl"), "--json"]) == 2
    assert main(["data", "check", str(good), "--min-pixels", "9000", "--max-pixels", "5000"]) == 2
    assert "--min-pixels" in capsys.readouterr().err


def test_cli_subprocess_has_no_traceback(tmp_path):
    from conftest import run_cli

    (tmp_path / "e.jsonl").write_text("")
    result = run_cli("data", "check", tmp_path / "e.jsonl")
    assert result.returncode == 2 and "empty" in result.stderr and "Traceback" not in result.stderr


def test_rows_longer_than_the_models_context_are_problems_without_max_length(tmp_path):
    """Issue 10, item 11: no --max-length used to accept any length; Qwen2-VL reads 32768 positions.
    (The preset is not downloaded: the real Qwen vocabulary counts " word" as one token, so the row
    needs more than 32768 of them.)"""
    png(tmp_path / "img" / "a.png")
    path = write_jsonl(tmp_path / "long.jsonl", [swift(), swift(question="<image>" + "word " * 40000)])
    result = run_cli("data", "check", path, "--model", "qwen2-vl-2b-instruct", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["valid"] == 1 and report["context"] == 32768
    assert [p["kind"] for p in report["problems"]] == ["too-long"] and report["problems"][0]["row"] == 2
    assert "more than the 32768 positions model 'qwen2-vl-2b-instruct' can read" in report["problems"][0]["reason"]
    demo = run_cli("data", "check", path, "--max-length", "100000", "--model", "demo")  # the demo model reads 4096
    assert demo.returncode == 1 and "4096 positions model 'demo' can read" in demo.stdout


def test_a_check_without_model_counts_with_a_real_qwen_not_the_tiny_demo(tmp_path):
    """The demo reads 4096 positions with a toy vocabulary: the user's own data is counted with
    Qwen2-VL's real vocabulary and context unless --model says otherwise; the demo's data with the demo."""
    from workbench.cli.data import DEFAULT_CHECK_MODEL, check_model
    from workbench.demo import ensure_demo

    png(tmp_path / "img" / "a.png")
    path = write_jsonl(tmp_path / "own.jsonl", [swift(question="<image>" + "word " * 5000)])
    result = run_cli("data", "check", path, "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and report["context"] == 32768, result.stdout + result.stderr
    assert f"model '{DEFAULT_CHECK_MODEL}'" in run_cli("data", "check", path).stdout
    assert check_model(None, str(ensure_demo().data / "train.jsonl")) == "demo"
    assert check_model("my/model", str(path)) == "my/model"
