"""Evaluation during training (workbench.training.evaluation): eval rows from step 0 with a task metric,
the best checkpoint named in status.json and kept by the rotation, a stop during evaluation that leaves
the run resumable, and the same score as the Inference tab's held-out check on the same model."""

import json

import pytest

from workbench.run_folder import RunFolder
from workbench.training import JobState, TrainingJob
from workbench.training import evaluation


@pytest.fixture(scope="module")
def fast(demo_config):
    """Demo settings, one small row per step, evaluation every 2 steps on 2 held-out answers."""
    return demo_config.replace(training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                         "logging_steps": 1, "warmup_ratio": 0.0, "save_steps": 2, "eval_steps": 2,
                                         "eval_samples": 2})


def evals(out) -> list[dict]:
    return [r for r in RunFolder(out).metrics() if r.get("kind") == "eval"]


def scripted(monkeypatch, scores: dict, during=None):
    """AnswerCheck.run answers for real, then reports ``scores[step]`` (a best that is not the newest)."""
    real = evaluation.AnswerCheck.run
    steps = []

    def run(self, model):
        result = real(self, model)
        steps.append(len(steps))
        if during is not None:
            during(len(steps) - 1)
        return {**result, "eval_score": scores[2 * (len(steps) - 1)]}

    monkeypatch.setattr(evaluation.AnswerCheck, "run", run)


def test_eval_rows_start_at_step_0_and_the_best_checkpoint_survives_the_rotation(fast, tmp_path, monkeypatch):
    scripted(monkeypatch, {0: 0.0, 2: 0.9, 4: 0.1, 6: 0.2})
    out = tmp_path / "run"
    job = TrainingJob(fast.replace(training={"max_steps": 6, "save_total_limit": 1, "output_dir": str(out)}))
    assert job.run() == JobState.FINISHED, job.message
    rows = evals(out)
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert [r["eval_score"] for r in rows] == [0.0, 0.9, 0.1, 0.2]
    assert all(r["eval_metric"] == "exact" and r["eval_loss"] > 0 for r in rows)  # the demo's one-word answers
    assert rows[0]["eval_loss"] > rows[-1]["eval_loss"]  # the base's level first, then training lowers it
    said = [line for line in RunFolder(out).events() if "Evaluated at step" in line]
    assert len(said) == 4 and said[1].endswith(f"Evaluated at step 2: eval loss {rows[1]['eval_loss']:.4f}, exact 0.900.")
    status = json.loads((out / "status.json").read_text())
    assert status["best_checkpoint"] == "checkpoint-2" and status["best_score"] == 0.9
    # save_total_limit 1 keeps the newest (to resume) and the best, as transformers' rotation does
    assert [p.name for _, p in RunFolder(out).complete_checkpoints()] == ["checkpoint-2", "checkpoint-6"]


def test_the_rotation_keeps_the_newest_and_the_best(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (10, 20, 30, 40, 50):
        (tmp_path / f"checkpoint-{step}").mkdir()
        folder.mark_complete(tmp_path / f"checkpoint-{step}")
    removed = folder.keep_newest_complete(2, best=tmp_path / "checkpoint-20")
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-30", "checkpoint-40"]
    assert [p.name for _, p in folder.complete_checkpoints()] == ["checkpoint-20", "checkpoint-50"]
    assert folder.keep_newest_complete(1, best=tmp_path / "checkpoint-20") == []  # both protected
    assert [p.name for p in folder.keep_newest_complete(1)] == ["checkpoint-20"]


def test_a_stop_during_evaluation_leaves_the_run_resumable(fast, tmp_path, monkeypatch):
    out = tmp_path / "run"
    holder = {}
    # the stop arrives while the step-4 evaluation answers: the run saves checkpoint-4 and stops there
    scripted(monkeypatch, {0: 0.0, 2: 0.5, 4: 0.25, 6: 0.75, 8: 0.5},
             during=lambda n: holder["job"].request_stop() if n == 2 else None)
    config = fast.replace(training={"max_steps": 8, "output_dir": str(out)})
    job = holder["job"] = TrainingJob(config)
    assert job.run() == JobState.STOPPED, job.message
    assert RunFolder(out).resumable() and RunFolder(out).newest_complete().name == "checkpoint-4"
    assert json.loads((out / "status.json").read_text())["best_checkpoint"] == "checkpoint-2"
    resumed = TrainingJob(config, resume=True)
    assert resumed.run() == JobState.FINISHED, resumed.message
    assert [r["step"] for r in evals(out)] == [0, 2, 4, 6, 8]  # no second step-0 or step-4 row
    status = json.loads((out / "status.json").read_text())
    assert status["best_checkpoint"] == "checkpoint-6" and status["best_score"] == 0.75


def test_training_eval_and_the_inference_check_give_the_same_score(trained_run, demo, demo_config):
    from workbench.data.collate import SampleEncoder
    from workbench.inference import Comparer, heldout_check, heldout_samples

    samples = heldout_samples(demo.heldout, limit=6)
    comparer = Comparer("demo", trained_run.output_dir, demo_config)
    checked = heldout_check(comparer, samples)
    d = demo_config.data
    check = evaluation.AnswerCheck(samples, SampleEncoder(comparer.processor, d.max_length, d.min_pixels,
                                                          d.max_pixels), limit=6)
    result = check.run(comparer.model)
    assert checked["metric"] == check.metric == "exact"
    assert [r["answer"] for r in check.last] == [r["adapter"] for r in checked["rows"]]
    assert result["eval_score"] == pytest.approx(checked["adapter_score"])
    # the score is the share of normalised matches, counted independently here
    assert checked["adapter_score"] == pytest.approx(checked["adapter_accuracy_normalised"])


@pytest.mark.slow  # about 40 s: one run in this process and one launch of 2 processes
def test_eval_on_two_ddp_processes_matches_one_process(demo_config, tmp_path, monkeypatch):
    """Every rank answers its share of the held-out rows (row i on rank i mod 2, 5 rows: one rank pads
    with a row that does not count); the scores meet on every rank, and the rows logged are one
    process's rows: the same steps, the same score, the eval loss up to batch composition."""
    from test_scale_out import cli, rank_processes

    monkeypatch.setenv("WORKBENCH_COLLECTIVE_TIMEOUT_S", "120")  # a hang fails in 2 minutes, not 30
    config = demo_config.replace(training={"max_steps": 20, "save_steps": 10, "eval_steps": 10, "eval_samples": 5,
                                           "logging_steps": 5})
    single = TrainingJob(config.replace(training={"output_dir": str(tmp_path / "one")}))
    assert single.run() == JobState.FINISHED, single.message
    out = tmp_path / "ddp"
    proc = cli("train", config.save(tmp_path / "run.yaml"), "--strategy", "ddp", "--nproc", 2, "--output-dir", out)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        for pid, _ in rank_processes(out):
            import os
            import signal

            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    one, two = evals(tmp_path / "one"), evals(out)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 10, 20]
    assert [r["eval_score"] for r in two] == [r["eval_score"] for r in one]
    assert [r["eval_answers"] for r in two] == [r["eval_answers"] for r in one]  # rows in order, from both ranks
    assert [a["row"] for a in one[0]["eval_answers"]] == [1, 2, 3, 4, 5]
    # the answers changed with training, so their equality says the ranks answered with the trained model
    assert one[-1]["eval_answers"] != one[0]["eval_answers"]
    for a, b in zip(one, two):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=2e-2)
    assert json.loads((out / "status.json").read_text())["best_checkpoint"] == \
        json.loads((tmp_path / "one" / "status.json").read_text())["best_checkpoint"]


def test_the_best_checkpoint_is_offered_to_the_inference_and_export_tabs(demo_config, tmp_path):
    from workbench.runs import run_choices, run_info, list_runs
    from workbench.ui import export_tab, inference_tab

    run = tmp_path / "runs" / "r1"
    for step in (10, 20):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
        RunFolder(run).mark_complete(run / f"checkpoint-{step}")
    demo_config.save(run / "run.yaml")
    RunFolder(run).write_status("stopped", "Stopped at step 20.", 20, 40, best_checkpoint="checkpoint-10",
                                best_score=0.875)
    info = run_info(run)
    assert info.best_checkpoint == str(run / "checkpoint-10") and info.best_score == 0.875
    choices = run_choices(list_runs(tmp_path / "runs"))
    assert choices[1] == ("r1 · best: checkpoint-10 · eval score 0.875", str(run / "checkpoint-10"))
    assert run_info(run / "checkpoint-10").base == "demo"  # a checkpoint names its run's base
    adapter, base, _ = inference_tab.choose_run(choices[1][1], "")
    assert adapter == str(run / "checkpoint-10") and base == "demo"
    adapter, out, note = export_tab.choose_run(choices[1][1], "adapter")
    assert adapter == str(run / "checkpoint-10") and "r1-checkpoint-10-adapter" in out


def test_grounding_rows_are_scored_by_their_boxes(demo, demo_config, tmp_path, monkeypatch):
    """ms-swift grounding rows, written in Qwen2-VL's 0-1000 boxes by the data check, are scored by IoU:
    an answer with the reference box is found, one a box off by 200 of 1000 each way is not (IoU 1/7)."""
    import torch

    from data_helpers import png, write_jsonl
    from workbench.training.inputs import build_datasets

    png(tmp_path / "img" / "a.png", 100, 100)
    row = {"messages": [{"role": "user", "content": "<image>Where is the <ref-object>?"},
                        {"role": "assistant", "content": "<ref-object><bbox>"}],
           "images": ["img/a.png"], "objects": {"ref": ["box", "box"], "bbox": [[10, 10, 50, 50]]}}
    path = str(write_jsonl(tmp_path / "ground.jsonl", [row, row]))
    config = demo_config.replace(data={"train_path": path, "eval_path": path},
                                 training={"eval_steps": 2, "eval_samples": 2})
    _, eval_set, _ = build_datasets(config, str(demo.model))
    check = evaluation.answer_check(config, eval_set)
    assert check.metric == "iou"
    assert check.samples[0].answer.endswith("<|box_start|>(100,100),(500,500)<|box_end|>")
    answers = iter(["box(100,100),(500,500)", "box(300,300),(700,700)"])  # as decoded: box tokens dropped
    monkeypatch.setattr(check, "answer", lambda model, sample: next(answers))
    result = check.run(torch.nn.Linear(1, 1))
    assert result == {"eval_score": 0.5, "eval_iou": pytest.approx((1 + 1 / 7) / 2)}


def test_report_to_reaches_trainer_and_a_missing_tracker_is_named_before_loading(demo_config, monkeypatch):
    import importlib.util

    from workbench.errors import UserError
    from workbench.training.checks import check_tracker
    from workbench.training.inputs import build_trainer_args

    config = demo_config.replace(training={"report_to": "tensorboard", "eval_steps": 5})
    args = build_trainer_args(config, has_eval=True)
    assert args.report_to == ["tensorboard"] and args.metric_for_best_model == "eval_score"
    assert args.greater_is_better and args.eval_on_start and args.prediction_loss_only
    assert build_trainer_args(demo_config, has_eval=False).report_to == []  # none: no tracker
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="training.report_to is tensorboard but the tensorboard package is not installed"):
        check_tracker("tensorboard")
    check_tracker("none")
    with pytest.raises(UserError, match="training.report_to 'neptune' is unknown"):
        demo_config.replace(training={"report_to": "neptune"})


def test_the_generation_cache_is_what_the_planner_term_says_and_below_a_training_layers_input(demo):
    """The KV cache of an answered row, measured on the demo model, against the planner's term; and for
    the real shapes (2B, 7B, 72B: hidden, KV heads x 128) the term stays below the checkpointed layer
    input the training step already holds for a row as long, so the plan's step peak bounds evaluation."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.planner.terms import checkpoint_boundary_bytes, generation_cache_bytes

    model = Qwen2VLForConditionalGeneration.from_pretrained(demo.model, dtype=torch.bfloat16).eval()
    text = model.config.text_config
    kv_dim = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    tokens = 37
    with torch.no_grad():
        cache = model(input_ids=torch.full((1, tokens), 5), use_cache=True).past_key_values
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert measured == text.num_hidden_layers * generation_cache_bytes(tokens, kv_dim)
    for hidden, kv_heads in ((1536, 2), (3584, 4), (8192, 8)):
        assert generation_cache_bytes(4096, kv_heads * 128) < checkpoint_boundary_bytes(4096, hidden)
