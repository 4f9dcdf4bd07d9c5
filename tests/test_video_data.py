"""Video rows: every layout read, frames sampled as qwen-vl-utils samples them, counts equal to an
independent count, problem rows for videos that cannot be read, batches that carry the frames."""

import math
import os

import numpy as np
import pytest
import torch

from data_helpers import png, video, write_jsonl
from workbench.data.validation import check_dataset

SMALL = {"min_pixels": 1000, "max_pixels": 6000}  # a few tokens a frame: fast on CPU


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    video(root / "v" / "a.mp4", frames=24, width=64, height=48, fps=8)
    video(root / "v" / "b.webm", frames=17, width=80, height=40, fps=10, codec="libvpx-vp9")
    png(root / "img" / "a.png", 90, 60)
    for i in range(5):
        png(root / "fr" / f"{i}.png", 50, 40, (40 * i, 0, 0))
    return root


def _processor(name):
    from transformers import AutoProcessor

    from workbench.demo import ensure_demo

    return AutoProcessor.from_pretrained(str(ensure_demo(name=name).model))


def _user(content, answer="right"):
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


LAYOUTS = {
    "swift videos + <video>": {"messages": _user("<video>Which way?"), "videos": ["v/a.mp4"]},
    "qwen-vl-finetune video": {"conversations": [{"from": "human", "value": "<video>\nWhich way?"},
                                                 {"from": "gpt", "value": "right"}], "video": "v/b.webm"},
    "video part with nframes": {"messages": [
        {"role": "user", "content": [{"type": "video", "video": "v/a.mp4", "nframes": 4},
                                     {"type": "text", "text": "Which way?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "right"}]}]},
    "frame list with an image": {"messages": _user("<image><video>Which way?", "left"), "images": ["img/a.png"],
                                 "videos": [[f"fr/{i}.png" for i in range(5)]]},
    "two videos, options per entry": {"messages": _user("Look: <video> and <video>", "same"),
                                      "videos": [{"video": "v/a.mp4", "fps": 1.0}, "v/b.webm"]},
}


def _independent_frames(path, nframes, height, width):
    """Every frame decoded with PyAV, ``nframes`` picked evenly, resized with torch: none of the workbench's code."""
    import av

    with av.open(str(path)) as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        fps = float(container.streams.video[0].average_rate)
    indices = np.linspace(0, len(pictures) - 1, nframes).round().astype(int).tolist()
    stack = torch.from_numpy(np.stack([pictures[i] for i in indices])).permute(0, 3, 1, 2).float()
    frames = torch.nn.functional.interpolate(stack, size=(height, width), mode="bicubic", antialias=True)
    return frames, {"fps": fps, "frames_indices": indices, "total_num_frames": len(pictures)}


def _size(height, width, nframes, factor):
    """qwen-vl-utils' documented rule by hand: the per-frame cap is SMALL's max_pixels here."""
    from qwen_vl_utils import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=SMALL["min_pixels"], max_pixels=SMALL["max_pixels"])


@pytest.mark.parametrize("name,factor", [("demo", 28), ("demo-qwen3-vl", 32)])
def test_check_counts_a_video_row_as_the_processor_does(media, tmp_path, name, factor):
    processor = _processor(name)
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<video>Which way?"),
                                               "videos": [str(media / "v" / "a.mp4")]}])
    report = check_dataset(path, tokenizer=processor.tokenizer, model=name, video=SMALL)
    assert not report.problems
    # 24 frames at 8 fps, sampled at 2 fps: 6 frames (even, within 4..24)
    nframes = math.floor(24 / 8 * 2 / 2) * 2
    h, w = _size(48, 64, nframes, factor)
    frames, metadata = _independent_frames(media / "v" / "a.mp4", nframes, h, w)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "right"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    enc = processor(text=[text], videos=[frames], videos_kwargs={"video_metadata": [metadata], "do_resize": False,
                                                                 "do_sample_frames": False}, return_tensors="pt")
    row = report.per_row()[0]
    assert row["video_frames"] == [nframes]
    assert row["visual_tokens"] == (nframes // 2) * (h // factor) * (w // factor)
    assert row["tokens"] == enc["input_ids"].shape[1]
    assert report.stats["max"] == row["tokens"] and report.stats["videos"] == 1


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"])
def test_every_layout_counts_what_the_encoder_feeds(media, tmp_path, layout, name):
    from workbench.data.collate import SampleEncoder

    processor = _processor(name)
    path = write_jsonl(media / f"{abs(hash((layout, name)))}.jsonl", [LAYOUTS[layout]])
    report = check_dataset(path, tokenizer=processor.tokenizer, model=name, video=SMALL)
    assert not report.problems, report.problems
    item = SampleEncoder(processor, 4096, 3136, 20000, SMALL).encode(report.samples[0])
    row = report.per_row()[0]
    assert row["tokens"] == item["input_ids"].shape[0]
    grids = item["video_grid_thw"]
    assert row["video_frames"] == [int(t) * 2 for t in grids[:, 0]]
    pads = int((item["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    assert pads == int(grids.prod(dim=1).sum()) // 4
    assert item["pixel_values_videos"].shape[0] == int(grids.prod(dim=1).sum())
    tok = processor.tokenizer
    answer = report.samples[0].answer
    trained = item["labels"][item["labels"] != -100].tolist()
    assert trained == tok.encode(answer, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert row["trained_tokens"] == len(trained)


def test_a_video_part_without_reference_takes_the_next_of_videos(media, tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "video", "nframes": 4}, {"type": "text", "text": "?"}]},
                        {"role": "assistant", "content": "x"}], "videos": ["v/a.mp4"]}
    path = write_jsonl(media / "trl-style.jsonl", [row])
    report = check_dataset(path, video=SMALL)
    assert not report.problems and report.samples[0].videos == [str(media / "v" / "a.mp4")]
    assert report.samples[0].video_options == [{"nframes": 4}] and report.per_row()[0]["video_frames"] == [4]


def test_fetch_video_and_the_header_plan_agree(media):
    """The check's frames and sizes (from headers) equal what fetch_video really returns."""
    from PIL import Image

    from workbench.data.video_counts import video_plan
    from workbench.data.videos import read_video_info, sample_video, video_element

    for path in (media / "v" / "a.mp4", media / "v" / "b.webm"):
        info = read_video_info(str(path))
        for options in ({}, {"nframes": 6}, {"fps": 1.0}, SMALL, {"total_pixels": 20000, "min_pixels": 784},
                        {"resized_height": 60, "resized_width": 90}, {"video_start": 0.5, "video_end": 1.5}):
            for factor in (28, 32):
                sampled = sample_video(str(path), options, {}, factor)
                plan = video_plan(info.height, info.width, info.frames, info.fps,
                                  video_element(str(path), options, {}), factor)
                assert plan == (sampled.count, *sampled.frames.shape[2:]), (path, options, factor)
    frames = [Image.new("RGB", (70, 50)) for _ in range(5)]
    for options in ({}, SMALL, {"resized_height": 60, "resized_width": 90}):
        for factor in (28, 32):
            sampled = sample_video(frames, options, {}, factor)
            plan = video_plan(50, 70, 5, 0, video_element(frames, options, {}), factor, frame_list=True)
            assert plan == (sampled.count, *sampled.frames.shape[2:]) and sampled.count == 6


def test_settings_reach_the_sampler(media):
    from workbench.data.videos import defaults_from, sample_video
    from workbench.settings import DataSettings

    d = DataSettings(video_fps=4.0, video_max_frames=8, video_max_pixels=6000, video_min_pixels=1000)
    sampled = sample_video(str(media / "v" / "a.mp4"), {}, defaults_from(d))
    assert sampled.count == 8  # 24 frames at 8 fps sampled at 4 fps: 12, capped at 8
    assert sampled.frames.shape[2] * sampled.frames.shape[3] <= 6000
    assert sample_video(str(media / "v" / "a.mp4"), {"nframes": 4}, defaults_from(d)).count == 4  # the row wins


def test_unreadable_videos_are_problem_rows_naming_file_and_reason(media, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video at all")
    video(tmp_path / "one.mp4", frames=1)
    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    png(tmp_path / "big.png", 60, 60)
    rows = [{"messages": _user("<video>Which way?"), "videos": [v]} for v in
            ("missing.mp4", "text.mp4", "one.mp4", "folder.mp4", "pipe.mp4", "https://example.com/a.mp4",
             [str(media / "fr" / "0.png"), str(tmp_path / "big.png")])]
    report = check_dataset(write_jsonl(tmp_path / "d.jsonl", rows), video=SMALL)
    problems = {p.row: p for p in report.problems}
    assert sorted(problems) == [1, 2, 3, 4, 5, 6, 7] and not report.samples
    assert problems[1].kind == "video-missing" and "missing.mp4" in problems[1].reason
    assert problems[2].kind == "video-unreadable" and "text.mp4" in problems[2].reason
    assert problems[3].kind == "video-too-short" and "one.mp4" in problems[3].reason
    assert "folder" in problems[4].reason and "pipe" in problems[5].reason
    assert "not a local file" in problems[6].reason
    assert "different sizes" in problems[7].reason


def test_bad_video_options_are_problem_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "video", "video": "a.mp4", **opts}]},
                          {"role": "assistant", "content": "x"}]}
            for opts in ({"fps": 2, "nframes": 4}, {"nframes": "four"}, {"resized_height": 60})]
    report = check_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [p.kind for p in report.problems] == ["wrong-type", "wrong-type", "missing-field"]


def test_audio_is_still_refused(tmp_path):
    report = check_dataset(write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<audio>Hi"), "audios": ["a.wav"]}]))
    assert [p.kind for p in report.problems] == ["audio"]


def test_labels_unchanged_by_the_video_and_a_mixed_batch(media):
    from workbench.data.collate import IGNORE_INDEX, Collator, SampleEncoder
    from workbench.data.sample import Sample, Turn

    processor = _processor("demo")
    encoder = SampleEncoder(processor, 4096, 3136, 20000, SMALL)
    turns = [Turn("user", "<video>Which way does it move?"), Turn("assistant", "to the right")]
    with_video = Sample(turns, videos=[str(media / "v" / "a.mp4")], row=1)
    mixed = Sample([Turn("user", "<image><video>And here?"), Turn("assistant", "left")],
                   images=[str(media / "img" / "a.png")], videos=[[str(media / "fr" / f"{i}.png") for i in range(5)]],
                   row=2)
    items = [encoder.encode(with_video), encoder.encode(mixed)]
    tok = processor.tokenizer
    for item, answer in zip(items, ("to the right", "left")):
        trained = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
        assert trained == tok.encode(answer, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    batch = Collator(tok.pad_token_id)(items)
    assert batch["video_grid_thw"].shape == (2, 3) and batch["image_grid_thw"].shape == (1, 3)
    assert batch["pixel_values_videos"].shape[0] == int(batch["video_grid_thw"].prod(dim=1).sum())
    assert (batch["labels"] != IGNORE_INDEX).sum() == sum((i["labels"] != IGNORE_INDEX).sum() for i in items)


def test_two_training_steps_on_videos(media, demo, demo_config, tmp_path):
    from transformers import Trainer

    from workbench.data.collate import IGNORE_INDEX, Collator
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.training.inputs import build_datasets, build_trainer_args

    rows = [{"messages": _user("<video>Which way?", answer), "videos": [str(media / "v" / name)]}
            for answer, name in (("right", "a.mp4"), ("left", "b.webm"))] * 2
    rows.append({"messages": _user("<image><video>Which way?", "up"), "images": [str(media / "img" / "a.png")],
                 "videos": [[str(media / "fr" / f"{i}.png") for i in range(5)]]})
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    config = demo_config.replace(data={"train_path": str(path), "video_max_pixels": 6000, "video_min_pixels": 1000},
                                 training={"max_steps": 2, "save_steps": 0, "warmup_ratio": 0.0,
                                           "per_device_train_batch_size": 3, "gradient_accumulation_steps": 1,
                                           "output_dir": str(tmp_path / "run")})
    train, _, processor = build_datasets(config, str(demo.model))
    seen = []
    collator = Collator(processor.tokenizer.pad_token_id)

    def collate(items):
        batch = collator(items)
        seen.append(batch)
        return batch

    model = apply_lora(load_model(str(demo.model), config), config.lora, False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    Trainer(model=model, args=build_trainer_args(config, False), train_dataset=train, data_collator=collate).train()
    assert len(seen) >= 2 and all("pixel_values_videos" in b and "video_grid_thw" in b for b in seen)
    tok = processor.tokenizer
    answers = {tuple(tok.encode(a, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")])
               for a in ("right", "left", "up")}
    for batch in seen:
        for labels in batch["labels"]:
            assert tuple(labels[labels != IGNORE_INDEX].tolist()) in answers
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)


def test_dataset_tab_shows_a_strip_of_the_sampled_frames(media, tmp_path, demo_config):
    from PIL import Image

    from workbench.ui.dataset_tab import check, show_row, stats_markdown

    config = demo_config.replace(data={"video_max_pixels": 6000, "video_min_pixels": 1000}).to_dict()
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<image><video>Which way?"),
                                               "images": [str(media / "img" / "a.png")],
                                               "videos": [str(media / "v" / "a.mp4")]}])
    holder = check(str(path), None, "auto", config)[0]
    assert "Videos: 1, **6-6** frames each" in stats_markdown(holder["report"])
    assert list(holder["table"]["videos"]) == [1]
    gallery, segments, counts = show_row(holder, 1, config)
    strip, caption = gallery[-1]
    assert caption.startswith("video #1:") and "6 frames" in caption
    # 24 frames at 8 fps, 6 sampled at indices 0, 5, 9, 14, 18, 23: 0.0 s ... 2.9 s
    assert "0.0s, 0.6s, 1.1s, 1.8s, 2.2s, 2.9s" in caption and "Videos:" in counts
    assert Image.open(strip).size[0] > 6 * 50  # six frames side by side
    assert any(kind == "video" for _, kind in segments)
    assert sum(int(text.split()[0][1:]) for text, kind in segments if kind == "video") == \
        holder["report"].lengths[1].visual_tokens[1]


def test_a_file_without_pictures_is_a_problem_row(tmp_path):
    import wave

    with wave.open(str(tmp_path / "sound.mp4"), "wb") as sound:  # audio only, under a video's name
        sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 800)
    report = check_dataset(write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<video>?"),
                                                                "videos": ["sound.mp4"]}]))
    assert [p.kind for p in report.problems] == ["video-unreadable"]
    assert "sound.mp4" in report.problems[0].reason and "no video stream" in report.problems[0].reason


@pytest.mark.parametrize("fields, words", [
    ({"video_min_frames": 1}, "at least 2"), ({"video_min_frames": 10, "video_max_frames": 8}, "above"),
    ({"video_fps": 0.0}, "positive"), ({"video_max_pixels": -1}, "0 for qwen-vl-utils' default"),
    ({"video_min_pixels": 9000, "video_max_pixels": 6000}, "above")])
def test_video_settings_are_validated(fields, words):
    from workbench.errors import UserError
    from workbench.settings import RunConfig

    with pytest.raises(UserError, match=words):
        RunConfig().replace(data=fields).validate()


def test_data_check_cli_reports_frames_per_video(media, tmp_path, capsys):
    import json

    from workbench.cli.main import main

    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<video>Which way?"),
                                               "videos": [str(media / "v" / "a.mp4")]}])
    args = ["data", "check", str(path), "--model", "demo", "--video-min-pixels", "1000", "--video-max-pixels", "6000"]
    assert main(args + ["--video-fps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["per_row"][0]["video_frames"] == [12] and out["stats"]["video_frames_max"] == 12
    assert main(args + ["--video-max-frames", "4"]) == 0
    assert "4-4 frames each" in capsys.readouterr().out


def test_a_low_max_pixels_setting_lowers_the_default_min(media):
    """qwen-vl-utils refuses max_pixels below its default min_pixels (100352); a run's setting brings min down."""
    from workbench.data.videos import BadVideo, sample_video

    sampled = sample_video(str(media / "v" / "a.mp4"), {}, {"max_pixels": 6000})
    assert sampled.frames.shape[2] * sampled.frames.shape[3] <= 6000
    with pytest.raises(BadVideo, match="min/max_pixels"):  # a row's own keys stay qwen-vl-utils' rule
        sample_video(str(media / "v" / "a.mp4"), {"max_pixels": 6000}, {})
    # above qwen-vl-utils' default min the setting is passed as it is: the same frames as qwen-vl-utils gives
    from workbench.data.videos import video_element

    assert "min_pixels" not in video_element("a.mp4", {}, {"max_pixels": 200704})


def test_a_still_video_gives_the_pixels_of_its_image():
    """Frames reach the processor at 0-255 like images: two copies of an image (sized as it is) give the
    image's own patches, so a video is normalised exactly as an image is."""
    from PIL import Image

    from workbench.data.collate import SampleEncoder
    from workbench.data.sample import Sample, Turn

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (56, 112, 3), dtype=np.uint8))
    encoder = SampleEncoder(_processor("demo"), 4096, 56 * 112, 56 * 112, {"min_pixels": 1000, "max_pixels": 56 * 112})
    turns = [Turn("user", "<image><video>Same?"), Turn("assistant", "yes")]
    item = encoder.encode(Sample(turns, images=[image], videos=[[image, image]], row=1))
    assert torch.equal(item["video_grid_thw"], item["image_grid_thw"])
    assert torch.equal(item["pixel_values_videos"], item["pixel_values"])


def test_a_video_too_large_to_hold_decoded_is_a_problem_row(media, tmp_path, monkeypatch):
    from workbench.data import videos
    from workbench.data.videos import BadVideo, sample_video

    monkeypatch.setattr(videos, "MAX_DECODED_BYTES", 5 * 64 * 48 * 3)  # five frames of a.mp4
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _user("<video>?"), "videos": [str(media / "v" / "a.mp4")]}])
    assert [p.kind for p in check_dataset(path, video={"fps": 2.0}).problems] == ["video-too-large"]  # 6 frames
    assert check_dataset(path, video={"fps": 1.0}).problems == []  # 4 frames
    with pytest.raises(BadVideo, match="video_max_frames"):
        sample_video(str(media / "v" / "a.mp4"), {"nframes": 6}, {})
    assert sample_video(str(media / "v" / "a.mp4"), {"nframes": 4}, {}).count == 4


@pytest.mark.parametrize("model_type, model", [("qwen3_vl", "qwen3-vl-8b-instruct"),
                                               ("qwen2_5_vl", "qwen2.5-vl-7b-instruct")])
def test_real_vocabulary_counts_text_glued_to_a_video(media, model_type, model):
    """Qwen3-VL's first timestamp follows the text with no special token between: with the real
    vocabulary "?<" is one token, so the check tokenizes that boundary joined."""
    from test_real_vocabulary import encoder_for

    from workbench.data.collate import SampleEncoder

    processor = encoder_for(model_type).processor
    encoder = SampleEncoder(processor, 4096, 3136, 112 * 112, SMALL)
    rows = [{"messages": _user(q, "ok"), "videos": ["v/a.mp4"] * q.count("<video>")}
            for q in ("What happens?<video>", "Look:<video>", "(<video>)", "Say: <video>!", "  <video>", "x\n<video>")]
    report = check_dataset(write_jsonl(media / f"glued-{model_type}.jsonl", rows), tokenizer=processor.tokenizer,
                           model=model, video=SMALL)
    assert not report.problems
    assert [r["tokens"] for r in report.per_row()] == [encoder.encode(s)["input_ids"].shape[0] for s in report.samples]


@pytest.mark.parametrize("name", ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"])
def test_every_family_trains_on_a_mixed_image_and_video_batch(media, name):
    from transformers import AutoModelForImageTextToText

    from workbench.data.collate import IGNORE_INDEX, Collator, SampleEncoder
    from workbench.data.formats import load_samples
    from workbench.demo import ensure_demo

    rows = [LAYOUTS["frame list with an image"], LAYOUTS["two videos, options per entry"],
            {"messages": _user("<image>Colour?", "red"), "images": ["img/a.png"]}]
    samples = load_samples(write_jsonl(media / f"mixed-{name}.jsonl", rows)).samples
    processor = _processor(name)
    encoder = SampleEncoder(processor, 4096, 3136, 20000, SMALL)
    batch = Collator(processor.tokenizer.pad_token_id)([encoder.encode(s) for s in samples])
    assert {"pixel_values", "pixel_values_videos", "video_grid_thw"} <= set(batch)
    assert ("second_per_grid_ts" in batch) == (name == "demo-qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(str(ensure_demo(name=name).model))
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and (batch["labels"] != IGNORE_INDEX).sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad is not None  # the vision tower ran backward


@pytest.mark.parametrize("row, videos, options", [
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "c.mp4"}}]},
                   {"role": "assistant", "content": "x"}]}, ["c.mp4"], [{}]),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "value": "c.mp4", "video_fps": 1}]},
                   {"role": "assistant", "content": [{"type": "text", "value": "x"}]}]}, ["c.mp4"], [{"fps": 1}]),
    ({"video": ["f/1.png", "f/2.png"], "conversations": [{"from": "human", "value": "<video>?"},
                                                          {"from": "gpt", "value": "x"}]},
     [["f/1.png", "f/2.png"]], [{}]),
    ({"messages": _user("?"), "videos": [{"path": "c.mp4", "video_max_pixels": 50176, "video_maxlen": 8}]},
     ["c.mp4"], [{"max_pixels": 50176, "max_frames": 8}]),
])
def test_video_forms_parse(tmp_path, row, videos, options):
    from workbench.data.formats import load_samples

    loaded = load_samples(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert not loaded.problems, loaded.problems
    sample = loaded.samples[0]
    absolute = [[str(tmp_path / f) for f in v] if isinstance(v, list) else str(tmp_path / v) for v in videos]
    assert sample.videos == absolute and sample.video_options == options
    assert sum(t.text.count("<video>") for t in sample.turns) == len(videos)
    assert [p["type"] for m in sample.messages() for p in m["content"]].count("video") == len(videos)
