"""Bad input through the real CLI: every case exits non-zero with one sentence, never a traceback.

Each case is ``python -m workbench ARGS`` in its own process. Starting a fresh interpreter
costs 4-7 s of CPU here (torch + transformers imports), so most cases run in processes
forked from one "zygote" that imported those libraries once and then runs
``runpy.run_module("workbench", run_name="__main__")`` with the case's ``sys.argv``,
its stdout/stderr redirected at the file-descriptor level: the same entry point, exit
code and output as the shell command, at a fraction of the cost. A few cases per
command also run as plain ``python -m workbench`` subprocesses to pin that the two agree.

``bad_inputs(folder, adapter)`` is the table; ``benchmarks/reliability.py`` runs the same one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIVE_MB = 5 * 1024 * 1024


@dataclass
class Case:
    name: str
    args: list
    code: int = 2  # 2 unusable input; 1 for "data check found problem rows"
    words: str = ""  # a regex the error sentence must match (case-insensitive)


@dataclass
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    def error_line(self) -> str:
        """The last 'error: ...' line (ours, or argparse's 'prog: error: ...')."""
        lines = [line for line in self.stderr.splitlines() if re.match(r"^(\S.*: )?error: ", line)]
        return lines[-1] if lines else ""

    def problems(self) -> list[str]:
        """What is wrong with this answer (empty: a clean answer)."""
        found = []
        if self.returncode != self.case.code:
            found.append(f"exit code {self.returncode}, expected {self.case.code}")
        if "Traceback" in self.stderr or "Traceback" in self.stdout:
            found.append("a traceback on screen")
        text = self.error_line() if self.case.code == 2 else self.stdout + self.stderr
        if self.case.code == 2:
            if not text:
                found.append("no 'error: ...' line on stderr")
            elif len(text) > 1000:
                found.append(f"the error line is {len(text)} characters long")
            elif "bug in the workbench" in text:
                found.append("reported as a bug, not as bad input")
        if self.case.words and not re.search(self.case.words, text, re.IGNORECASE):
            found.append(f"message does not match {self.case.words!r}")
        return found


# ---------------------------------------------------------------------------- the inputs
def write_inputs(folder: Path) -> dict[str, Path]:
    """Broken files of every kind the issue lists; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    good_row = {"messages": [{"role": "user", "content": "<image>What color?"},
                             {"role": "assistant", "content": "red"}], "images": ["missing.png"]}
    files = {
        "empty": b"",
        "blank": b"\n  \n\t\n",
        "binary": bytes(range(256)) * 64,
        "latin1": '{"messages": [{"role": "user", "content": "caf\u00e9"}]}\n'.encode("latin-1"),
        "notjson": b"this is not json\nnor is this\n",
        "nested_list": b"[" * 200_000 + b"]" * 200_000,
        "nested_line": b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
        "numbers": b"[1, 2, 3]",
        "strings": b'"just a string"\n"another"\n',
        "no_messages": b'{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "a2"}\n',
        "null_messages": b'{"messages": null}\n',
        "wrong_types": json.dumps({"messages": [{"role": 5, "content": ["x"]}], "images": 7}).encode() + b"\n",
        "huge_line": b"x" * FIVE_MB,
        "huge_path": json.dumps({**good_row, "images": ["p" * FIVE_MB]}).encode() + b"\n",
        "missing_image": json.dumps(good_row).encode() + b"\n",
        "huge_text": json.dumps({**good_row, "images": [], "messages": [
            {"role": "user", "content": "word " * (FIVE_MB // 5)}, {"role": "assistant", "content": "red"}]}).encode(),
    }
    paths = {}
    for name, content in files.items():
        path = folder / f"{name}.jsonl"
        path.write_bytes(content)
        paths[name] = path
    (folder / "a_folder").mkdir(exist_ok=True)
    paths["folder"] = folder / "a_folder"
    paths["missing"] = folder / "no-such-file.jsonl"
    # configs (YAML) for train
    yamls = {
        "cfg_empty": "",
        "cfg_list": "- 1\n- 2\n",
        "cfg_scalar": "42\n",
        "cfg_unknown_section": "optimizer: {lr: 1}\n",
        "cfg_null_rank": "lora: {rank: null}\n",
        "cfg_text_rank": "lora: {rank: eight}\n",
        "cfg_zero_rank": "lora: {rank: 0}\n",
        "cfg_negative_length": "data: {max_length: -5}\n",
        "cfg_zero_batch": "training: {per_device_train_batch_size: 0}\n",
        "cfg_nested": "a: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "cfg_huge_model": "model: {name_or_path: " + "m" * 100_000 + "}\n",
        "cfg_huge_line": "model: {name_or_path: " + "m" * FIVE_MB + "}\n",
        "cfg_section_list": "lora: [1, 2]\n",
        "cfg_nan_lr": "training: {learning_rate: .nan}\n",
    }
    for name, content in yamls.items():
        path = folder / f"{name}.yaml"
        path.write_text(content)
        paths[name] = path
    (folder / "cfg_binary.yaml").write_bytes(bytes(range(256)) * 16)
    paths["cfg_binary"] = folder / "cfg_binary.yaml"
    (folder / "cfg_latin1.yaml").write_bytes("model: {name_or_path: caf\u00e9}\n".encode("latin-1"))
    paths["cfg_latin1"] = folder / "cfg_latin1.yaml"
    # model folders and configs
    (folder / "not_a_model").mkdir(exist_ok=True)
    paths["not_a_model"] = folder / "not_a_model"
    (folder / "llama.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    paths["llama_config"] = folder / "llama.json"
    (folder / "bad_sizes.json").write_text(json.dumps({"model_type": "qwen2_vl", "text_config": {"hidden_size": -4}}))
    paths["bad_sizes_config"] = folder / "bad_sizes.json"
    # images
    (folder / "not_an_image.png").write_text("hello")
    paths["not_an_image"] = folder / "not_an_image.png"
    (folder / "empty.png").write_bytes(b"")
    paths["empty_image"] = folder / "empty.png"
    # adapters
    no_config = folder / "adapter_without_config"
    no_config.mkdir(exist_ok=True)
    (no_config / "adapter_model.safetensors").write_bytes(b"")
    paths["adapter_without_config"] = no_config
    broken = folder / "adapter_broken_json"
    broken.mkdir(exist_ok=True)
    (broken / "adapter_config.json").write_text("{not json")
    paths["adapter_broken_json"] = broken
    return paths


def pickle_only_adapter(folder: Path, adapter: Path) -> Path:
    """An adapter folder whose weights are a pickle (adapter_model.bin), not safetensors."""
    import shutil

    import torch

    path = folder / "adapter_pickle_only"
    path.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "run.yaml"):
        shutil.copy(adapter / name, path / name)
    torch.save({"weights": torch.zeros(1)}, path / "adapter_model.bin")
    return path


def other_base_model(folder: Path) -> Path:
    """A tiny Qwen2-VL like the demo but with another MLP width: the demo's adapters do not fit it."""
    from workbench.demo import build_processor, demo_model_config

    path = folder / "other-base"
    if (path / "config.json").is_file():
        return path
    processor = build_processor()
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    config = demo_model_config(processor.tokenizer)
    config.text_config.intermediate_size = 96
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def bad_inputs(folder: Path, adapter: Path, other_base: Path) -> list[Case]:
    """The table: (name, argv after ``python -m workbench``, exit code, words the sentence must hold)."""
    p = write_inputs(folder)
    run = folder / "runs"
    cases: list[Case] = []

    # plan: GPU specs, model names and paths, sizes
    plan = ["plan", "--model", "qwen2-vl-7b-instruct"]
    for name, spec, words in [
        ("gpus-words", "lots", "not a size"), ("gpus-empty", "", "empty"), ("gpus-zero", "0GiB", "positive|below"),
        ("gpus-zero-count", "0x40GiB", "at least 1"), ("gpus-negative", "=-40GiB", "size|positive"),
        ("gpus-negative-count", "=-2x40GiB", "at least 1"), ("gpus-negative-dash", "-40GiB", "expected one argument"), ("gpus-absurd", "4x9999TB", "larger than any GPU"),
        ("gpus-too-many", "100000x40GiB", "more than"), ("gpus-unit", "40furlongs", "unknown unit"),
        ("gpus-tiny", "4x0.1", "below 256 MiB"), ("gpus-nan", "nanGiB", "not a size"), ("gpus-inf", "4xinf", "not a size"),
        ("gpus-trailing-comma", "40GiB,", "not a size|empty"), ("gpus-huge-count", "9" * 40 + "x40GiB", "more than"),
    ]:
        gpus = ["--gpus" + spec] if spec.startswith("=") else ["--gpus", spec]  # --gpus=-40GiB: argparse's own syntax
        cases.append(Case(f"plan/{name}", plan + gpus, 2, words))
    plan_g = plan + ["--gpus", "2x80GB"]
    for flag, value, words in [
        ("--lora-rank", "0", "lora-rank"), ("--lora-rank", "-8", "lora-rank"), ("--max-length", "0", "max-length"),
        ("--max-length", "-5", "max-length"), ("--batch-size", "0", "batch-size"), ("--batch-size", "-1", "batch-size"),
        ("--max-pixels", "0", "max-pixels"), ("--images-per-sample", "-1", "images-per-sample"),
        ("--lora-dropout", "1.5", "dropout"), ("--lora-dropout", "nan", "dropout"),
        ("--lora-rank", "eight", "invalid int"), ("--max-length", "1e99", "invalid int"),
        ("--lora-targets", "no_such_layer", "matches no|target"), ("--lora-targets", "(", "target|regular expression|regex"),
        ("--max-length", str(10**30), "max-length|too large|absurd"),
        ("--batch-size", str(10**30), "batch-size|too large|absurd"),
    ]:
        cases.append(Case(f"plan/{flag[2:]}={value[:12]}", plan_g + [flag, value], 2, words))
    for name, model, words in [
        ("model-unknown", "qwen3-vl-900b", "Unknown model"), ("model-empty", "", "empty"),
        ("model-not-a-model-folder", p["not_a_model"], "no config.json"),
        ("model-missing-path", folder / "nowhere" / "model", "Unknown model|does not exist"),
        ("model-empty-json", p["empty"], "not a readable JSON|not a model"), ("model-binary", p["binary"], "not a readable JSON|not a model"),
        ("model-other-arch", p["llama_config"], "llama"), ("model-bad-sizes", p["bad_sizes_config"], "not a valid|hidden_size"),
        ("model-dataset-file", p["no_messages"], "is a file, not a model"),
    ]:
        cases.append(Case(f"plan/{name}", ["plan", "--model", str(model), "--gpus", "2x80GB"], 2, words))

    # data check: unusable files exit 2, files with problem rows exit 1
    data = ["data", "check"]
    for name, words in [("empty", "empty"), ("blank", "empty"), ("binary", "binary"), ("latin1", "UTF-8"),
                        ("notjson", "not JSON"), ("nested_list", "nested too deeply"),
                        ("nested_line", "not JSON|too deep"), ("huge_line", "not JSON"),
                        ("numbers", "not a dataset|no record"), ("strings", "not a dataset|no record"),
                        ("no_messages", "not a dataset|no record"), ("folder", "folder"), ("missing", "does not exist")]:
        cases.append(Case(f"data/{name}", data + [str(p[name])], 2, words))
    for name, words in [("null_messages", "messages"), ("wrong_types", "role|images"),
                        ("huge_path", "missing|too long"), ("missing_image", "missing")]:
        cases.append(Case(f"data/{name}", data + [str(p[name])], 1, words))
    cases.append(Case("data/huge_text", data + [str(p["huge_text"]), "--max-length", "2048"], 1,
                      "more than the 32768 positions model .qwen2-vl-7b-instruct. can read"))  # past the context
    for flag, value, words in [("--max-length", "0", "max-length"), ("--max-pixels", "-1", "max-pixels"),
                               ("--min-pixels", "0", "min-pixels"), ("--format", "csv", "invalid choice")]:
        cases.append(Case(f"data/{flag[2:]}={value}", data + [str(p["missing_image"]), flag, value], 2, words))
    cases.append(Case("data/model-not-a-model-folder", data + [str(p["missing_image"]), "--model", str(p["not_a_model"])],
                      1, "missing"))  # tokenizer falls back to the documented estimate

    # train: dataset files, config files, models, sizes (each must fail before any weights load)
    def train(*args, out="r"):
        return ["train", *map(str, args), "--output-dir", str(run / out)]

    for name, words in [("empty", "empty"), ("binary", "binary"), ("latin1", "UTF-8"), ("notjson", "not JSON"),
                        ("nested_list", "nested too deeply"), ("huge_line", "not JSON"),
                        ("numbers", "not a dataset|no record"), ("no_messages", "not a dataset|no record"),
                        ("null_messages", "problem row"), ("wrong_types", "problem row"),
                        ("huge_path", "problem row"), ("missing_image", "missing"), ("folder", "folder"),
                        ("missing", "does not exist")]:
        cases.append(Case(f"train/dataset-{name}", train("--dataset", p[name], out=f"d-{name}"), 2, words))
    for name, words in [("cfg_empty", "empty"), ("cfg_list", "mapping"), ("cfg_scalar", "mapping"),
                        ("cfg_unknown_section", "Unknown config section"), ("cfg_null_rank", "lora.rank"),
                        ("cfg_text_rank", "lora.rank"), ("cfg_zero_rank", "lora.rank"),
                        ("cfg_negative_length", "data.max_length"),
                        ("cfg_zero_batch", "per_device_train_batch_size"), ("cfg_nested", "nested|YAML"),
                        ("cfg_huge_model", "model.name_or_path"), ("cfg_huge_line", "far more than a run config"), ("cfg_section_list", "lora"), ("cfg_nan_lr", "learning_rate"),
                        ("cfg_binary", "YAML|UTF-8|binary"), ("cfg_latin1", "YAML|UTF-8")]:
        cases.append(Case(f"train/{name}", train(p[name], out=name), 2, words))
    cases.append(Case("train/config-missing", train(folder / "nope.yaml", out="cfg-missing"), 2, "does not exist"))
    cases.append(Case("train/config-folder", train(folder, out="cfg-folder"), 2, "not a file|does not exist"))
    for name, model, words in [("model-unknown", "no-such-model-xyz", "Unknown model|not a model|Could not load"),
                               ("model-not-a-model-folder", p["not_a_model"], "not a model folder|no config.json"),
                               ("model-missing-path", folder / "nowhere" / "model", "does not exist|Unknown model|Could not load")]:
        cases.append(Case(f"train/{name}", train("--model", model, "--dataset", p["missing_image"], out=name), 2, words))
    for flag, value, words in [("--max-steps", "0", "max-steps"), ("--max-steps", "-3", "max-steps"),
                               ("--save-steps", "-1", "save_steps"), ("--max-steps", "many", "max-steps must be a positive whole number")]:
        cases.append(Case(f"train/{flag[2:]}={value}", train(flag, value, out=f"f{flag}{value}"), 2, words))
    cases.append(Case("train/resume-missing-run", ["train", "--resume", "--output-dir", str(run / "never")], 2,
                      "does not exist"))
    cases.append(Case("train/resume-without-output-dir", ["train", "--resume"], 2, "output-dir"))
    cases.append(Case("train/output-dir-is-a-file", ["train", "--output-dir", str(p["notjson"])], 2, "is a file"))

    # infer: adapters, base models, images, prompts, held-out files, decoding numbers
    ask = ["--prompt", "What color is the shape?"]
    for name, path, words in [("adapter-missing", folder / "no-adapter", "does not exist"),
                              ("adapter-not-a-folder", p["notjson"], "does not exist|not a folder|folder"),
                              ("adapter-without-config", p["adapter_without_config"], "no adapter|adapter_config"),
                              ("adapter-broken-json", p["adapter_broken_json"], "not valid JSON|damaged"),
                              ("adapter-empty-folder", p["not_a_model"], "no adapter"),
                              ("adapter-pickle-only", pickle_only_adapter(folder, Path(adapter)), "safetensors")]:
        cases.append(Case(f"infer/{name}", ["infer", "--adapter", str(path), *ask], 2, words))
    with_adapter = ["infer", "--adapter", str(adapter)]
    for name, extra, words in [
        ("base-other-model", ["--base", str(other_base)], "trained on|does not fit"),
        ("base-unknown", ["--base", "no-such-model-xyz"], "Could not load|Unknown model|not a model"),
        ("base-not-a-model-folder", ["--base", str(p["not_a_model"])], "not a model folder|no config.json"),
        ("image-missing", ["--image", str(folder / "nope.png")], "does not exist"),
        ("image-folder", ["--image", str(folder)], "does not exist|folder|not a file"),
        ("image-not-an-image", ["--image", str(p["not_an_image"])], "not a readable image"),
        ("image-empty", ["--image", str(p["empty_image"])], "not a readable image"),
        ("max-new-tokens-zero", ["--max-new-tokens", "0"], "max_new_tokens|max-new-tokens"),
        ("top-p-zero", ["--temperature", "1", "--top-p", "0"], "top_p|top-p"),
        ("temperature-nan", ["--temperature", "nan"], "temperature"),
    ]:
        cases.append(Case(f"infer/{name}", with_adapter + ask + extra, 2, words))
    cases.append(Case("infer/prompt-empty", with_adapter + ["--prompt", "  "], 2, "prompt"))
    cases.append(Case("infer/nothing-to-do", with_adapter, 2, "--prompt"))
    for name, words in [("empty", "empty"), ("binary", "binary"), ("notjson", "not JSON"), ("folder", "folder"),
                        ("missing", "does not exist"), ("numbers", "not a dataset|no record"),
                        ("missing_image", "no usable rows")]:
        cases.append(Case(f"infer/dataset-{name}", with_adapter + ["--dataset", str(p[name])], 2, words))
    cases.append(Case("infer/limit-zero", with_adapter + ["--dataset", "demo", "--limit", "0"], 2, "positive"))
    return cases


# ---------------------------------------------------------------------------- running them
ZYGOTE = textwrap.dedent("""
    import json, os, runpy, sys, traceback
    # the imports every command pays for, paid once; nothing runs (no threads) before the forks
    import torch, transformers, peft, PIL.Image, yaml
    from transformers import AutoProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration, Trainer
    import workbench.cli.data, workbench.cli.infer, workbench.cli.plan, workbench.cli.train
    import workbench.data.validation, workbench.inference, workbench.planner, workbench.training.job

    cases, out_dir, timeout = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3])
    for i, argv in enumerate(cases):
        out, err = os.path.join(out_dir, f"{i}.out"), os.path.join(out_dir, f"{i}.err")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
                sys.argv = ["python -m workbench", *argv]
                runpy.run_module("workbench", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        import signal, time
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = 124 << 8
                with open(err, "a") as f:
                    f.write("\\n(zygote: killed after %s s)\\n" % timeout)
                break
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status) if status != 124 << 8 else 124
        with open(os.path.join(out_dir, f"{i}.rc"), "w") as f:
            f.write("%d %.3f" % (code, time.monotonic() - deadline + timeout))
""")


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_forked(cases: list[Case], scratch: Path, timeout: float = 120.0) -> list[Outcome]:
    """Each case in its own process forked from one pre-imported interpreter (see the module doc)."""
    scratch.mkdir(parents=True, exist_ok=True)
    table = scratch / "cases.json"
    table.write_text(json.dumps([[str(a) for a in c.args] for c in cases]))
    subprocess.run([sys.executable, "-c", ZYGOTE, str(table), str(scratch), str(timeout)], cwd=ROOT,
                   env=cli_env(), check=True, timeout=timeout * len(cases) + 300)
    read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""  # noqa: E731
    outcomes = []
    for i, case in enumerate(cases):
        code, seconds = (read(scratch / f"{i}.rc") or "-1 0").split()
        outcomes.append(Outcome(case, int(code), read(scratch / f"{i}.out"), read(scratch / f"{i}.err"), float(seconds)))
    return outcomes


def run_plain(case: Case, timeout: float = 300.0) -> Outcome:
    """The same case as a fresh ``python -m workbench`` process."""
    result = subprocess.run([sys.executable, "-m", "workbench", *map(str, case.args)], capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT, env=cli_env())
    return Outcome(case, result.returncode, result.stdout, result.stderr)


# ---------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def table(tmp_path_factory, demo, trained_run):
    folder = tmp_path_factory.mktemp("bad-input")
    return bad_inputs(folder / "inputs", Path(trained_run.output_dir), other_base_model(folder))


@pytest.fixture(scope="module")
def outcomes(table, tmp_path_factory):
    return {o.case.name: o for o in run_forked(table, tmp_path_factory.mktemp("bad-input-out"))}


def test_the_table_covers_every_command_and_kind(table):
    names = [c.name for c in table]
    assert len(names) == len(set(names)), "case names must be unique"
    for command in ("plan/", "data/", "train/", "infer/"):
        assert sum(n.startswith(command) for n in names) >= 10, command
    for kind in ("empty", "binary", "latin1", "notjson", "nested", "numbers", "null", "wrong_types", "huge_line",
                 "folder", "missing", "gpus-zero", "gpus-negative", "gpus-absurd", "model-unknown",
                 "not-a-model-folder", "rank", "length", "batch", "adapter-missing", "base-other-model"):
        assert any(kind in n for n in names), kind


def test_every_bad_input_gets_a_clean_answer(outcomes):
    failures = {name: (o.problems(), o.stderr[-400:]) for name, o in outcomes.items() if o.problems()}
    assert not failures, json.dumps(failures, indent=1)


def test_unusable_input_is_one_sentence_naming_the_problem(outcomes):
    for name, o in outcomes.items():
        if o.case.code == 2 and not o.problems():
            line = o.error_line()
            ours = line.startswith("error: ")
            argparse_usage = re.match(r"^python -m workbench [a-z ]+: error: (argument|unrecognized)", line)
            assert (ours or argparse_usage) and len(line) > 30, (name, line)
            assert "\n" not in line.strip() and line.rstrip().endswith((".", ")", "'", "?")) or argparse_usage, (name, line)


@pytest.mark.parametrize("name", ["plan/gpus-absurd", "data/binary", "train/cfg_zero_rank", "infer/adapter-missing"])
def test_a_fresh_interpreter_answers_the_same(name, outcomes):
    forked = outcomes[name]
    plain = run_plain(forked.case)
    assert (plain.returncode, plain.error_line()) == (forked.returncode, forked.error_line())
    assert "Traceback" not in plain.stderr


def test_tracebacks_go_to_the_log_not_the_screen(tmp_path):
    """A bug (not bad input) prints one line naming the log file, and the traceback lands there."""
    from workbench.paths import log_file

    before = log_file().read_text(errors="replace") if log_file().exists() else ""
    script = ("import sys, workbench.cli.plan as c\n"
              "def boom(args):\n    raise RuntimeError('injected bug')\n"
              "c.run = boom\nfrom workbench.cli.main import main\n"
              "sys.exit(main(['plan', '--model', 'demo', '--gpus', '1x24GiB']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=cli_env(),
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "injected bug" in result.stderr and str(log_file()) in result.stderr
    after = log_file().read_text(errors="replace")
    assert "Traceback" in after[len(before):] and "RuntimeError: injected bug" in after[len(before):]
