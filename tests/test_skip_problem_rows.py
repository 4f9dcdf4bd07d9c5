"""data.skip_problem_rows: strict by default (the refusal names the option), else the valid rows train,
the count said up front and the left-out rows listed in the run folder."""

import json

import pytest

from conftest import run_cli
from data_helpers import write_jsonl
from workbench.training import JobState, TrainingJob

BROKEN = {3: "image-missing", 7: "malformed-json"}  # line -> the kind data check gives it


def broken_dataset(demo, tmp_path, rows: int = 12):
    """The demo's first rows (absolute image paths), with lines 3 and 7 broken in two different ways
    (line = row number)."""
    good = [json.loads(line) for line in demo.train.read_text().splitlines()]
    good = [{**row, "images": [str(demo.data / image) for image in row["images"]]} for row in good]
    records, kept = [], iter(good)
    for line in range(1, rows + 1):
        if BROKEN.get(line) == "image-missing":
            records.append({**next(kept), "images": ["images/no-such-image.png"]})
        elif BROKEN.get(line) == "malformed-json":
            records.append('{"messages": [{"role": "user", "content": "<image>hi"}')
        else:
            records.append(next(kept))
    return write_jsonl(tmp_path / "broken.jsonl", records)


def config_for(demo_config, demo, path, out, **data):
    return demo_config.replace(
        data={"train_path": str(path), **data},
        training={"max_steps": 2, "save_steps": 0, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "output_dir": str(out)})


def test_strict_start_refuses_and_names_the_option(demo, demo_config, tmp_path):
    job = TrainingJob(config_for(demo_config, demo, broken_dataset(demo, tmp_path), tmp_path / "run"))
    assert job.run() == JobState.FAILED and job.exit_code == 2
    assert "2 problem row(s)" in job.message and "row 3" in job.message and "row 7" in job.message
    assert "--skip-problem-rows" in job.message and "Train on the valid rows only" in job.message
    assert not (tmp_path / "run" / "skipped-rows.jsonl").exists()


def test_skipping_trains_the_valid_rows_and_lists_the_others(demo, demo_config, tmp_path, monkeypatch):
    import workbench.training.job as job_module

    rows = 12
    path = broken_dataset(demo, tmp_path, rows)
    seen = {}
    plain = job_module.trainer_class

    def recording():
        class Recording(plain()):
            def train(self, *args, **kwargs):
                seen["rows"] = [sample.row for sample in self.train_dataset.samples]
                return super().train(*args, **kwargs)
        return Recording

    monkeypatch.setattr(job_module, "trainer_class", recording)
    lines = []
    job = TrainingJob(config_for(demo_config, demo, path, tmp_path / "run", skip_problem_rows=True),
                      on_message=lines.append)
    assert job.run() == JobState.FINISHED, job.message
    assert job.step == 2
    # the trained rows, counted apart from the check: every line of the file but the broken ones
    assert seen["rows"] == [line for line in range(1, rows + 1) if line not in BROKEN]
    assert len(seen["rows"]) == rows - 2
    said = [line for line in lines if f"skipping 2 of {rows} rows with problems" in line]
    assert said and "(first: row 3:" in said[0] and "skipped-rows.jsonl" in said[0]
    # up front: said before the model loads, and kept in the run's events for other watchers
    assert lines.index(said[0]) < next(i for i, line in enumerate(lines) if "Loading demo" in line)
    events = (tmp_path / "run" / "events.log").read_text()
    assert f"skipping 2 of {rows}" in events and "2 problem row(s) skipped" in events
    assert f"Finished 2 steps ({rows - 2} rows; 2 problem row(s) skipped)" in job.message  # still said at the end
    listed = job.folder.skipped_rows()
    assert [(r["row"], r["kind"]) for r in listed] == sorted(BROKEN.items())
    assert all(r["file"] == str(path) and r["reason"] for r in listed)
    assert job.folder.config().data.skip_problem_rows is True  # run.yaml carries it


def test_a_clean_file_with_skipping_on_lists_nothing(demo, demo_config, tmp_path):
    path = write_jsonl(tmp_path / "clean.jsonl", demo.train.read_text().splitlines()[:6])
    out = tmp_path / "run"
    out.mkdir()
    (out / "skipped-rows.jsonl").write_text('{"row": 1}\n')  # left by an earlier try of this run folder,
    (out / "events.log").write_text("")  # which wrote its events too (a folder without them is not a run's)
    job = TrainingJob(config_for(demo_config, demo, path, out, skip_problem_rows=True, image_folder=str(demo.data)),
                      resume=False, prepared=True)
    assert job.run() == JobState.FINISHED, job.message
    assert not (out / "skipped-rows.jsonl").exists() and job.folder.skipped_rows() == []
    assert "skipping" not in (out / "events.log").read_text()


def test_every_row_broken_is_still_refused(demo, demo_config, tmp_path):
    path = write_jsonl(tmp_path / "all-bad.jsonl", ["{not json", {"messages": []}])
    job = TrainingJob(config_for(demo_config, demo, path, tmp_path / "run", skip_problem_rows=True))
    assert job.run() == JobState.FAILED and job.exit_code == 2
    assert "Every row of" in job.message and "nothing to train on" in job.message


def test_a_row_failing_while_encoding_ends_the_run_with_a_sentence(demo, demo_config, tmp_path, monkeypatch):
    """The check passed it, encoding refuses it (longer than max_length after all): the run stops naming
    the row, never trains on without it."""
    from workbench.data import collate

    encode = collate.SampleEncoder.encode

    def shorter(self, sample):
        self.max_length = 20  # every row is longer than this
        return encode(self, sample)

    monkeypatch.setattr(collate.SampleEncoder, "encode", shorter)
    path = broken_dataset(demo, tmp_path)
    job = TrainingJob(config_for(demo_config, demo, path, tmp_path / "run", skip_problem_rows=True))
    assert job.run() == JobState.FAILED
    assert "more than max_length 20" in job.message and "row " in job.message
    assert "\n" not in job.message


def test_rank_fingerprint_tells_row_sets_apart(demo, demo_config):
    from types import SimpleNamespace

    from workbench.training.inputs import row_fingerprint

    def dataset(*rows):
        return SimpleNamespace(samples=[SimpleNamespace(row=r) for r in rows])

    assert row_fingerprint(dataset(1, 2, 4), None) == row_fingerprint(dataset(1, 2, 4), None)
    assert row_fingerprint(dataset(1, 2, 4), None) != row_fingerprint(dataset(1, 2, 3), None)
    assert row_fingerprint(dataset(1, 2), dataset(3)) != row_fingerprint(dataset(1), dataset(2, 3))
    assert 0 <= row_fingerprint(dataset(*range(1000)), None) < 2**31


def test_training_tab_checkbox_reaches_the_config(demo_config):
    from types import SimpleNamespace

    from workbench.training.checks import config_from_raw
    from workbench.ui import training_tab

    config = {**demo_config.to_dict(), "plan": {"kept": True}}
    assert config["data"]["skip_problem_rows"] is False  # strict by default
    on = training_tab.set_skip(config, True)
    assert config_from_raw(on).data.skip_problem_rows is True and on["plan"] == {"kept": True}
    assert config_from_raw(training_tab.set_skip(on, False)).data.skip_problem_rows is False
    # the label counts the problem rows once the Dataset tab chose the file the run trains on
    report = SimpleNamespace(path="/d/train.jsonl", problems=[1, 2, 3])
    chosen = training_tab.set_skip({**on, "data": {**on["data"], "train_path": "/d/train.jsonl"}}, True)
    update = training_tab.skip_choice(chosen, {"report": report})
    assert update["value"] is True and "skip 3 problem rows" in update["label"]
    assert "skip the problem rows" in training_tab.skip_choice(on, {"report": report})["label"]  # another file


def test_training_tab_start_says_rows_are_skipped(demo, demo_config, tmp_path):
    from workbench.session import Workbench
    from workbench.ui import training_tab

    session = Workbench()
    config = config_for(demo_config, demo, broken_dataset(demo, tmp_path), tmp_path / "run", skip_problem_rows=True)
    message = training_tab.start(session, config.to_dict())
    session.job.wait(120)
    assert message.startswith("Started") and "Problem rows are skipped" in message
    assert session.job.state == JobState.FINISHED, session.job.message


def test_cli_flag_is_in_help_and_reaches_run_yaml(demo, tmp_path):
    from workbench.cli.main import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--skip-problem-rows" in help_text and "Train on the valid rows only" in help_text
    launch = build_parser().parse_args(["launch", "--out", str(tmp_path / "l"), "--skip-problem-rows"])
    assert launch.skip_problem_rows is True
    out = tmp_path / "run"
    result = run_cli("train", "--dataset", broken_dataset(demo, tmp_path), "--output-dir", out, "--max-steps", 1,
                     "--skip-problem-rows")
    assert result.returncode == 0, result.stderr
    assert "skipping 2 of 12 rows with problems" in result.stderr
    assert "skip_problem_rows: true" in (out / "run.yaml").read_text()
    assert len((out / "skipped-rows.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("flag", [[], ["--skip-problem-rows"]])
def test_launch_writes_the_flag_into_run_yaml(tmp_path, flag):
    from workbench.cli.launch import write_launch
    from workbench.cli.main import build_parser

    args = build_parser().parse_args(["launch", "--out", str(tmp_path / "l"), "--strategy", "ddp",
                                      "--nproc-per-node", "2", *flag])
    plan = write_launch(args)
    assert plan["config"].data.skip_problem_rows is bool(flag)
    assert f"skip_problem_rows: {'true' if flag else 'false'}" in (tmp_path / "l" / "run.yaml").read_text()


def _agree(rank: int, port: int, values: list, answers):
    import os

    import torch.distributed as dist

    from workbench.training.launch_plan import Rank
    from workbench.training.placement import RankPlacement

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        placement = RankPlacement(Rank(rank=rank, local_rank=rank, world=2, node=0), "ddp")
        answers.put((rank, [placement.same_on_every_rank(v[rank]) for v in values]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mine, other, same", [(7, 7, True), (7, 8, False), (8, 7, False),
                                              (2**31 - 1, 0, False), (0, 0, True)])
def test_a_rank_learns_whether_every_rank_left_out_the_same_rows(mine, other, same, monkeypatch):
    """The collective's arithmetic, with the other rank's value standing in for the gloo all-reduce."""
    from workbench.training.launch_plan import Rank
    from workbench.training.placement import RankPlacement

    placement = RankPlacement(Rank(rank=0, local_rank=0, world=2, node=0), "ddp")
    monkeypatch.setattr(placement, "all_reduce_max", lambda value: max(value, other if value >= 0 else -other))
    assert placement.same_on_every_rank(mine) is same


@pytest.mark.slow
def test_ranks_that_left_out_different_rows_are_told_apart():
    """Every rank checks the file itself; the job compares their row sets through this collective."""
    import torch.multiprocessing as mp

    from workbench.training.launch_plan import free_port

    values = [(7, 7), (7, 8), (2**31 - 1, 0), (0, 0)]
    context = mp.get_context("spawn")
    answers = context.Queue()
    mp.start_processes(_agree, args=(free_port(), values, answers), nprocs=2, start_method="spawn")
    got = dict(answers.get(timeout=60) for _ in range(2))
    assert got[0] == got[1] == [True, False, False, True]


@pytest.mark.slow
def test_ddp_ranks_skip_the_same_rows(demo, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli("train", "--dataset", broken_dataset(demo, tmp_path), "--output-dir", out, "--max-steps", 2,
                     "--strategy", "ddp", "--nproc", 2, "--skip-problem-rows", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "skipping 2 of 12 rows with problems" in result.stderr
    assert [json.loads(line)["row"] for line in (out / "skipped-rows.jsonl").read_text().splitlines()] == [3, 7]
    events = (out / "events.log").read_text()
    assert "(10 rows; 2 problem row(s) skipped)" in events and "[finished]" in events


def test_the_app_wires_the_checkbox_to_the_shared_config():
    from workbench.ui.app import build_app

    app = build_app()
    box = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "training-skip-problem-rows")
    assert box.value is False and "Train on the valid rows only" in box.label
    names = {}
    for fn in app.fns.values():
        names.setdefault(getattr(fn.fn, "__name__", ""), []).append(fn)
    (setter,) = names["set_skip"]
    assert [b._id for b in setter.inputs][-1] == box._id and len(setter.outputs) == 1  # writes the config
    (labeller,) = names["skip_choice"]
    assert [b._id for b in labeller.outputs] == [box._id]


def test_the_checkbox_counts_the_rows_start_will_skip(demo, demo_config, tmp_path):
    """Seen in the browser: "Use as training data" (p95) set max_length below the longest rows; the box said
    "skip 2 problem rows", Start skipped 3. The label must give the count Start's own check finds."""
    from workbench.data.stats import load_tokenizer
    from workbench.training.inputs import load_valid_samples
    from workbench.ui.dataset_tab import check, use_as_training
    from workbench.ui import training_tab

    path = broken_dataset(demo, tmp_path, rows=40)
    holder = check(str(path), None, "auto", demo_config.to_dict())[0]
    config, _ = use_as_training(holder, "p95", demo_config.to_dict())
    config = training_tab.set_skip(config, True)
    label = training_tab.skip_choice(config, holder)["label"]
    from workbench.training.checks import config_from_raw

    _, skipped, _ = load_valid_samples(str(path), config_from_raw(config), load_tokenizer("demo"))
    assert len(skipped.problems) > len(BROKEN)  # p95 left some valid rows too long
    assert f"skip {len(skipped.problems)} problem rows" in label
