"""``python -m workbench plan``: exit codes, JSON as the last line, help on every flag."""

import json

import pytest

from workbench.cli.main import build_parser, main


def test_json_last_line_and_exit_zero(capsys):
    rc = main(["plan", "--model", "qwen2-vl-72b-instruct", "--gpus", "4x40GiB", "--max-length", "2048",
               "--max-pixels", "1003520", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert rc == 0 and data["fits"] is True
    assert data["device_map"]["lm_head"] == 3


def test_does_not_fit_exits_one(capsys):
    rc = main(["plan", "--model", "qwen2-vl-72b-instruct", "--gpus", "2x40GiB"])
    out = capsys.readouterr().out
    assert rc == 1 and "DOES NOT FIT" in out and "To make it fit" in out


def test_human_table(capsys):
    argv = ["plan", "--model", "qwen2-vl-2b-instruct", "--gpus", "40GiB,24GiB", "--lora-targets", "q_proj,v_proj"]
    assert main(argv + ["--strategy", "device_map"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0" in out and "logits/loss" in out and "Device map:" in out
    # auto: the 2B model fits on each GPU, so two replicas (ddp) beat one GPU busy at a time.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Strategy: ddp over 2 GPUs") and "*ddp" in out and "Device map:" not in out


@pytest.mark.parametrize("argv", [["--gpus", "4x0GiB"], ["--gpus", "lots"], ["--max-length", "-5"],
                                  ["--lora-rank", "0"], ["--model", "/no/such/folder"]])
def test_bad_input_exits_two_with_one_sentence(argv, capsys):
    base = {"--model": "qwen2-vl-7b-instruct", "--gpus": "2x80GB"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    rc = main(["plan"] + [x for kv in base.items() for x in kv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err


def test_every_flag_has_help():
    parser = build_parser()
    plan = parser._subparsers._group_actions[0].choices["plan"]
    for action in plan._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest
