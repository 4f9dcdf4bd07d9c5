"""Training tab handlers against the real job, and the series the plots draw."""

import json
from types import SimpleNamespace
import threading
import time

import pandas as pd

from workbench.training.bridge import MetricsBuffer
from workbench.training.series import decimate, loss_frame, memory_frame, predicted_peaks
from workbench.ui import training_tab


def is_skip(value):
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_start_says_which_parts_train_at_which_rate(demo_config):
    merger_full = demo_config.replace(lora={"recipe": "merger-full", "merger_lr": 0.01}, training={"learning_rate": 2e-4})
    assert training_tab.parts_note(merger_full) == "Trains: merger full at 0.01; language model LoRA at 0.0002."
    vision_only = demo_config.replace(lora={"recipe": "merger-only", "vision": "lora", "vision_lr": 1e-5})
    assert training_tab.parts_note(vision_only) == "Trains: vision tower LoRA at 1e-05; merger full at " \
        f"{demo_config.training.learning_rate:g}."


def test_start_stop_and_the_same_job_in_every_browser_tab(demo_config, tmp_path):
    from workbench.session import Workbench

    session = Workbench()
    config = demo_config.replace(training={"max_steps": 300, "per_device_train_batch_size": 1,
                                           "gradient_accumulation_steps": 1, "logging_steps": 1,
                                           "output_dir": str(tmp_path / "run")}).to_dict()
    started = training_tab.start(session, config)
    assert started.startswith("Started")
    # the demo's target_modules (language-and-merger) reach the merger and the language model with LoRA
    lr = f"{demo_config.training.learning_rate:g}"
    assert f"Trains: merger LoRA at {lr}; language model LoRA at {lr}." in started
    job = session.job
    try:
        refused = training_tab.start(session, {**config, "training": {**config["training"], "output_dir": str(tmp_path / "b")}})
        assert refused.startswith("**Not started:**") and str(job.output_dir) in refused
        deadline = time.monotonic() + 120
        while job.step < 2 and job.running and time.monotonic() < deadline:
            time.sleep(0.05)
        status, progress, loss, memory, log, view, run_dir, *_ = training_tab.tick(session, {}, config)
        assert "**training**" in status and "ETA" in progress and "<progress" in progress
        assert isinstance(loss, pd.DataFrame) and set(loss["series"]) == {"train"}
        assert is_skip(run_dir)  # not finished yet: nothing to publish
        other_browser = training_tab.tick(session, None, config)  # a reloaded page sees the same run
        assert other_browser[0].startswith("**training**") or other_browser[0].startswith("**saving**")
    finally:
        assert "Stop requested" in training_tab.stop(session)
        job.wait(120)
    status, _, loss, memory, log, view, run_dir, runs, box, _, *_ = training_tab.tick(session, view, config)
    assert status.startswith("**stopped**") and run_dir == str(job.output_dir)
    assert "[stopped]" in log and "cpu resident" in set(memory["value"]["series"])
    # room above the highest line: a peak on the plot's top edge reads as its border
    assert memory["y_lim"][0] == 0 and memory["y_lim"][1] > 1.1 * memory["value"]["GiB"].max()
    # the run stopped while this page watched it: it is offered to continue at once
    assert runs["value"] == str(job.output_dir) and str(job.output_dir) in [p for _, p in runs["choices"]]
    assert box["open"] is True
    again = training_tab.tick(session, view, config)
    assert is_skip(again[2]) and is_skip(again[3])  # nothing new: the plots are not resent
    assert is_skip(again[7]) and is_skip(again[8])  # the list is refreshed once, not on every tick
    assert training_tab.stop(session) == "The run already ended (stopped)."  # Stop pressed twice


def test_decimation_keeps_the_ends_and_bounds_the_payload():
    rows = [{"kind": "train", "step": i, "loss": 10 - i / 1000, "time": 1000.0 + i,
             "memory": [{"device": "cuda:0", "used_bytes": 2**30 * 5, "peak_allocated_bytes": 2**30 * 3,
                         "peak_reserved_bytes": 2**30 * 4}]} for i in range(1, 10001)]
    rows += [{"kind": "eval", "step": s, "eval_loss": 1.0, "time": 2000.0} for s in (5000, 10000)]
    frame = loss_frame(rows, max_points=300)
    train = frame[frame.series == "train"]
    assert len(train) == 300 and train.step.iloc[0] == 1 and train.step.iloc[-1] == 10000
    assert list(frame[frame.series == "eval"].step) == [5000, 10000]
    memory = memory_frame(rows, predicted=predicted_peaks({"devices": [{"device": "cuda:0", "total_bytes": 6 * 2**30}]}),
                          max_points=300)
    assert set(memory.series) == {"cuda:0 used", "cuda:0 peak allocated", "cuda:0 peak reserved",
                                  "cuda:0 predicted peak"}
    assert len(memory) == 3 * 300 + 2 and memory[memory.series == "cuda:0 predicted peak"].GiB.tolist() == [6.0, 6.0]
    assert decimate(list(range(5)), 10) == [0, 1, 2, 3, 4]


def test_metrics_buffer_under_concurrent_reads(tmp_path):
    from workbench.run_folder import RunFolder

    path = tmp_path / "metrics.jsonl"
    buffer = MetricsBuffer(RunFolder(tmp_path))
    total, errors = 3000, []

    def write():
        for i in range(total):
            buffer.append({"step": i})

    def read():
        seen = 0
        while seen < total:
            rows = buffer.since(seen)
            if [r["step"] for r in rows] != list(range(seen, seen + len(rows))):
                errors.append((seen, len(rows)))
                return
            seen += len(rows)
            last = buffer.last()
            if last is not None and last["step"] < seen - 1:
                errors.append(("last", last["step"], seen))
                return

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(buffer) == total
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(total))


def test_plots_are_left_alone_until_the_first_rows():
    # Gradio's LinePlot keeps categorical axes for good if its first value is an empty frame.
    class Quiet:
        def snapshot(self):
            return {"status": {"state": "loading", "message": "Loading.", "step": 0, "max_steps": 5, "running": True,
                               "elapsed_s": 1.0, "eta_s": None, "output_dir": "/tmp/run"},
                    "rows": [], "log": [], "external": False}

    _, _, loss, memory, *_ = training_tab.tick(Quiet(), {}, {})
    assert is_skip(loss) and is_skip(memory)


def test_memory_is_plotted_against_the_step_so_a_resumed_run_has_no_gap():
    # steps 1-3, then the run resumed a day later at step 4
    rows = [{"step": s, "time": t, "memory": [{"device": "cpu", "used_bytes": 2**30 * s}]}
            for s, t in ((1, 10.0), (2, 11.0), (3, 12.0), (4, 86400.0), (5, 86401.0))]
    frame = memory_frame(rows, predicted={"cpu": 6 * 2**30})
    used = frame[frame.series == "cpu resident"]
    assert used.step.tolist() == [1, 2, 3, 4, 5] and used.GiB.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert frame[frame.series == "cpu predicted peak"].step.tolist() == [1, 5]


def test_predicted_peaks_only_for_devices_the_run_uses():
    rows = [{"time": 10.0 + i, "memory": [{"device": "cpu", "used_bytes": 2**30}]} for i in range(3)]
    frame = memory_frame(rows, predicted={"cuda:0": 5 * 2**30, "cpu": 2 * 2**30})
    assert "cuda:0 predicted peak" not in set(frame["series"])
    assert "cpu predicted peak" in set(frame["series"])


class Scripted:
    """A session whose snapshot the test sets: one run, then another."""

    def __init__(self):
        self.snap = None

    def show(self, folder, state, running, rows=(), message="Loading."):
        self.snap = {"status": {"state": state, "message": message, "step": len(rows), "max_steps": 5,
                                "running": running, "elapsed_s": 1.0, "eta_s": None, "output_dir": folder},
                     "rows": list(rows), "log": [], "external": False}

    def snapshot(self):
        return self.snap

    def runs(self):
        return []


def test_the_status_line_shows_tags_as_text():
    # "<image>" in a row's reason vanished: Markdown took it for an HTML tag.
    session = Scripted()
    session.show("/tmp/a", "failed", False, message="row 3 has 2 '<image>' tags but 1 image: fix the row.")
    status = training_tab.tick(session, {}, {})[0]
    assert "'&lt;image&gt;' tags" in status and "<image>" not in status
    assert training_tab.status_markdown({"state": "x", "message": "a & <b>"}) == "**x**: a &amp; &lt;b&gt;"


def test_another_run_without_rows_clears_the_last_runs_plots_and_an_ended_run_clears_the_action_line():
    session, rows = Scripted(), [{"kind": "train", "step": s, "loss": 1.0 / s, "time": 10.0 + s} for s in (1, 2)]
    session.show("/tmp/a", "training", True, rows)
    _, _, loss, _, _, view, _, _, _, action, *_ = training_tab.tick(session, {}, {})
    assert isinstance(loss, pd.DataFrame) and len(loss) == 2 and is_skip(action)
    session.show("/tmp/a", "finished", False, rows)
    _, _, _, _, _, view, _, _, _, action, *_ = training_tab.tick(session, view, {})
    assert action == ""  # "Not resumed: it is training now" must not outlive the run it was about
    session.show("/tmp/b", "failed", False, message="The dataset has problem rows.")  # a failed Start
    _, _, loss, memory, _, view, _, _, _, action, *_ = training_tab.tick(session, view, {})
    assert loss is None and memory is None and is_skip(action)


def test_the_list_of_runs_to_continue_follows_a_resumed_run():
    # Seen in a browser: "stopped 221/300" stayed in the list after that run was resumed and finished.
    class Listed(Scripted):
        resumable = {"/tmp/a"}

        def runs(self):
            return [SimpleNamespace(label=lambda: "a: stopped 221/300", path=p, resumable=True) for p in self.resumable]

    session = Listed()
    session.show("/tmp/a", "stopped", False)
    *_, view, _, runs, _, _, _, _ = training_tab.tick(session, {}, {})
    assert is_skip(runs)  # the first look changes nothing
    session.resumable = set()  # resumed: it trains now
    session.show("/tmp/a", "training", True)
    *_, view, _, runs, _, _, _, _ = training_tab.tick(session, view, {})
    assert runs["choices"] == [] and runs["value"] is None
    session.show("/tmp/a", "finished", False)
    *_, view, _, runs, _, _, _, _ = training_tab.tick(session, view, {})
    assert runs["choices"] == []


def test_eval_scores_are_plotted_and_each_checkpoint_shows_its_score_with_the_best_marked(tmp_path):
    from workbench.run_folder import RunFolder
    from workbench.training.series import score_frame

    rows = [{"kind": "train", "step": 1, "loss": 2.0}]
    rows += [{"kind": "eval", "step": s, "eval_loss": 3.0 - s / 100, "eval_metric": "iou", "eval_score": score,
              "eval_iou": score / 2} for s, score in ((0, 0.0), (50, 0.75), (100, 0.5))]
    frame = score_frame(rows)
    assert list(frame[frame["series"] == "iou"]["score"]) == [0.0, 0.75, 0.5]
    assert list(frame[frame["series"] == "mean IoU"]["score"]) == [0.0, 0.375, 0.25]
    folder = RunFolder(tmp_path)
    for step in (50, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
        folder.mark_complete(tmp_path / f"checkpoint-{step}")
    folder.write_status("finished", "done", 100, 100, best_checkpoint="checkpoint-50", best_score=0.75)
    table = training_tab.checkpoints_table(folder, rows, {})
    assert list(table["checkpoint"]) == ["checkpoint-50", "checkpoint-100"]
    assert list(table["eval score"]) == [0.75, 0.5] and list(table["best"]) == ["★ best", ""]
    assert list(table["eval loss"]) == [2.5, 2.0]
    view = {}
    training_tab.checkpoints_table(folder, rows, view)
    assert is_skip(training_tab.checkpoints_table(folder, rows, view))  # unchanged: not resent
