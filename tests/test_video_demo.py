"""The video demo's rows: deterministic, labelled by what the frames show, and no frame alone tells."""

import json
import math

import pytest


def decoded(path):
    """Every frame of an mp4 as a grey uint8 array, read with PyAV (not the demo's own code)."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="gray") for frame in container.decode(video=0)])


def centroid(frame):
    """The bright dot's centre on a torus: the circular mean of its pixels' columns and rows."""
    import numpy as np

    rows, cols = np.nonzero(frame > 128)
    side_y, side_x = frame.shape

    def circular(values, side):
        angle = np.arctan2(np.sin(2 * np.pi * values / side).mean(), np.cos(2 * np.pi * values / side).mean())
        return (angle / (2 * np.pi) * side) % side

    return circular(cols + 0.5, side_x), circular(rows + 0.5, side_y)


def wrapped(delta, side):
    return (delta + side / 2) % side - side / 2


@pytest.fixture(scope="module")
def video_demo():
    """Built once into the test session's workbench home, where "demo-video" finds it."""
    from workbench.demo_video import ensure_video_demo

    return ensure_video_demo()


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clips(video_demo):
    """Every video of both splits, decoded once: {path in the row: frames}."""
    return {r["videos"][0]: decoded(video_demo.data / r["videos"][0])
            for r in rows(video_demo.train) + rows(video_demo.heldout)}


@pytest.fixture(scope="module")
def centres(clips):
    return {video: [centroid(frame) for frame in frames] for video, frames in clips.items()}


def test_the_build_is_deterministic(tmp_path):
    from workbench.demo_video import write_video_dataset

    for name in ("a", "b"):
        write_video_dataset(tmp_path / name, train_rows=12, heldout_rows=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 16
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rows_are_swift_jsonl_with_one_video_each(video_demo):
    train, heldout = rows(video_demo.train), rows(video_demo.heldout)
    assert len(train) >= 400 and len(heldout) >= 60
    for row in train + heldout:
        assert row["messages"][0]["content"].count("<video>") == len(row["videos"]) == 1
        assert (video_demo.data / row["videos"][0]).is_file()
    answers = [r["messages"][1]["content"] for r in heldout]
    each = len(heldout) // 4
    assert {a: answers.count(a) for a in set(answers)} == {"left": each, "right": each, "up": each, "down": each}


def test_every_video_moves_the_way_its_answer_says(video_demo, clips, centres):
    """The dot's path from the first to the last frame (frame-to-frame steps on the torus, summed)
    points the labelled way, by the same length in every video."""
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    lengths = set()
    for row in rows(video_demo.train) + rows(video_demo.heldout):
        frames, path = clips[row["videos"][0]], centres[row["videos"][0]]
        assert len(frames) >= 4
        side_y, side_x = frames.shape[1:]
        dx = sum(wrapped(b[0] - a[0], side_x) for a, b in zip(path, path[1:]))
        dy = sum(wrapped(b[1] - a[1], side_y) for a, b in zip(path, path[1:]))
        ex, ey = expected[row["messages"][1]["content"]]
        length = math.hypot(dx, dy)
        assert length > 2 * side_x / 4, row["videos"][0]  # moves a long way, not jitter
        assert abs(dx - ex * length) < 1.5 and abs(dy - ey * length) < 1.5, (row["videos"][0], dx, dy)
        lengths.add(round(length))
        # the dot is whole in every frame (drawn on the torus, never cut off at an edge)
        areas = [(f > 128).sum() for f in frames]
        assert max(areas) - min(areas) <= 0.1 * max(areas)
    assert len(lengths) <= 2


def test_no_single_frame_tells_the_direction(video_demo, clips, centres):
    """At every frame index, where the dot is says nothing about the answer: per direction, the dot
    lands in each quarter of the frame about equally often (it would not if the start depended on it)."""
    import numpy as np

    train = rows(video_demo.train)
    names = ("left", "right", "up", "down")
    side, frame_count = clips[train[0]["videos"][0]].shape[1], len(clips[train[0]["videos"][0]])
    for index in range(frame_count):
        table = np.zeros((4, 4), dtype=int)  # direction x quarter (left/right half, top/bottom half)
        for row in train:
            x, y = centres[row["videos"][0]][index]
            table[names.index(row["messages"][1]["content"]), 2 * int(y >= side / 2) + int(x >= side / 2)] += 1
        expected = len(train) / 16
        assert table.min() > 0.5 * expected and table.max() < 1.5 * expected, (index, table)


def test_heldout_videos_are_not_training_videos(video_demo, clips):
    import hashlib

    def digests(path):
        return {hashlib.sha256(clips[r["videos"][0]].tobytes()).hexdigest(): r["videos"][0] for r in rows(path)}

    train, heldout = digests(video_demo.train), digests(video_demo.heldout)
    assert len(train) == len(rows(video_demo.train))  # no two training videos alike either
    assert not set(train) & set(heldout)
    assert not set(train.values()) & set(heldout.values())


def test_demo_video_names_the_video_demo_rows(video_demo):
    from workbench.demo_video import demo_dataset_file
    from workbench.paths import home

    assert video_demo.root.is_relative_to(home())
    assert demo_dataset_file("demo-video") == str(video_demo.train)
    assert demo_dataset_file(" Demo-Video ", "heldout") == str(video_demo.heldout)
    assert demo_dataset_file("my/data.jsonl") == "my/data.jsonl"


def test_train_and_infer_commands_resolve_demo_video(video_demo, monkeypatch):
    import argparse

    from workbench.cli import infer, train

    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    config = train.config_from_args(parser.parse_args(["train", "--model", "demo", "--dataset", "demo-video"]))
    assert config.data.train_path == str(video_demo.train)
    # the video demo's own settings, not the image demo's: its merger trained in full, its clips' frames
    assert (config.lora.merger, config.data.video_max_frames, config.training.max_steps) == ("full", 8, 600)
    image = train.config_from_args(parser.parse_args(["train", "--model", "demo"]))
    assert image.lora.merger == "" and image.training.max_steps != 600

    class Asked(Exception):
        pass

    def heldout_rows(path, *args, **kwargs):
        raise Asked(path)

    monkeypatch.setattr(infer, "pick_adapter", lambda adapter: "adapter")
    monkeypatch.setattr("workbench.inference.adapter_base", lambda adapter: ("demo", None))
    monkeypatch.setattr("workbench.inference.heldout_rows", heldout_rows)
    parser = argparse.ArgumentParser()
    infer.register(parser.add_subparsers())
    with pytest.raises(Asked) as asked:
        infer.run(parser.parse_args(["infer", "--dataset", "demo-video"]))
    assert asked.value.args[0] == str(video_demo.heldout)


def test_data_check_reads_demo_video_with_the_demo_tokenizer(video_demo, monkeypatch):
    import argparse

    from workbench.cli import data

    class Asked(Exception):
        pass

    def check_dataset(path, *args, model=None, **kwargs):
        raise Asked(path, model)

    monkeypatch.setattr("workbench.data.validation.check_dataset", check_dataset)
    parser = argparse.ArgumentParser()
    data.register(parser.add_subparsers())
    with pytest.raises(Asked) as asked:
        data.run(parser.parse_args(["data", "check", "demo-video"]))
    assert asked.value.args == (str(video_demo.train), "demo")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"])
def test_each_family_learns_the_direction_through_the_workbench(model, tmp_path):
    # issue 21's done-when: train --dataset demo-video, then infer --dataset demo-video --json
    from conftest import run_cli

    trained = run_cli("train", "--model", model, "--dataset", "demo-video", "--output-dir", tmp_path / "run",
                      timeout=1200)
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_cli("infer", "--adapter", tmp_path / "run", "--dataset", "demo-video", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["adapter_accuracy"] >= 0.8 and report["base_accuracy"] <= 0.35, report


def test_demo_video_is_a_dataset_name_in_the_app_and_the_run_config_too(video_demo):
    # not only the CLI: the LoRA form, YAML (training's dataset_paths), the Dataset tab and launch.py --dataset
    from workbench.settings import RunConfig
    from workbench.training.inputs import dataset_paths
    from workbench.ui.app import LaunchOptions, initial_config
    from workbench.ui.dataset_tab import dataset_path

    config = RunConfig().replace(model={"name_or_path": "demo"}, data={"train_path": "demo-video"},
                                 training={"eval_steps": 50})
    assert dataset_paths(config) == (str(video_demo.train), str(video_demo.heldout))
    from workbench.training.checks import check_run_config

    check_run_config(config, check_output_dir=False)  # the LoRA tab's check: "demo-video does not exist" before
    assert dataset_path("demo-video", None)[0] == str(video_demo.train)
    app_config = initial_config(LaunchOptions(model="demo", dataset="demo-video"))
    assert app_config["data"]["train_path"] == "demo-video" and app_config["lora"]["merger"] == "full"
    assert app_config["data"]["video_max_frames"] == 8
