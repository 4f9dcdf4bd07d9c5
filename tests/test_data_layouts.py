"""Every row layout Qwen-VL users bring, written as its project writes it, against an independent
count: the real Qwen tokenizer on the conversation the row means (written here by hand), and
qwen-vl-utils' smart_resize for the images. A row is trained exactly as it reads, or refused."""

import json

import pytest

from data_helpers import png, write_jsonl
from workbench.data.collate import IGNORE_INDEX
from workbench.models.vocabulary import qwen_tokenizer

PIXELS = dict(min_pixels=3136, max_pixels=112 * 112)
SIZES = {"a.png": (84, 56), "b.png": (140, 100)}  # width, height


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    for name, (w, h) in SIZES.items():
        png(folder / "img" / name, w, h)
    return folder


def visual(name: str) -> int:
    from qwen_vl_utils import smart_resize

    w, h = SIZES[name]
    rh, rw = smart_resize(h, w, factor=28, **PIXELS)
    return (rh // 28) * (rw // 28)


def expected(messages: list[dict], images: list[str]) -> tuple[int, int]:
    """(total tokens, trained tokens) of the conversation ``messages`` means, counted by hand: each
    prompt (through the generation prompt) and each answer tokenized apart, image pads expanded."""
    tokenizer = qwen_tokenizer("qwen2_vl")
    pads = iter(visual(name) for name in images)
    total = trained = 0
    done = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        previous = tokenizer.apply_chat_template(messages[:done], tokenize=False) if done else ""
        prompt = prompt[len(previous):]
        while "<|image_pad|>" in prompt:
            prompt = prompt.replace("<|image_pad|>", "<|placeholder|>" * next(pads), 1)
        prompt = prompt.replace("<|placeholder|>", "<|image_pad|>")
        answer = len(tokenizer.encode(message["content"], add_special_tokens=False)) + 1
        total += len(tokenizer.encode(prompt, add_special_tokens=False)) + answer + 1  # "\n" after <|im_end|>
        trained += answer if message.get("loss") is not False else 0
        done = k + 1
    return total, trained


def user(text, images=0):
    content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def check(path, **kwargs):
    from workbench.data.validation import check_dataset

    return check_dataset(path, tokenizer=qwen_tokenizer("qwen2_vl"), **PIXELS, **kwargs)


# (layout name, rows as that project writes them, what each row means: (messages, images))
LAYOUTS = {
    "ms-swift messages, images without tags": (
        [{"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}],
          "images": ["img/a.png"]}],
        [([user("What colour?", 1), {"role": "assistant", "content": "red"}], ["a.png"])]),
    "ms-swift query/response/history": (
        [{"system": "Be brief.", "query": "<image>And now?", "response": "white",
          "history": [["<image>Colour?", "red"]], "images": ["img/a.png", "img/b.png"]}],
        [([{"role": "system", "content": "Be brief."}, user("Colour?", 1), {"role": "assistant", "content": "red"},
           user("And now?", 1), {"role": "assistant", "content": "white"}], ["a.png", "b.png"])]),
    "ms-swift loss: false": (
        [{"messages": [{"role": "user", "content": "<image>Colour?"},
                       {"role": "assistant", "content": "blue", "loss": False},
                       {"role": "user", "content": "Wrong, again."}, {"role": "assistant", "content": "red"}],
          "images": ["img/a.png"]}],
        [([user("Colour?", 1), {"role": "assistant", "content": "blue", "loss": False},
           user("Wrong, again."), {"role": "assistant", "content": "red"}], ["a.png"])]),
    "LLaVA / Qwen fine-tuning README (image, conversations)": (
        [{"id": "1", "image": "img/b.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                             {"from": "gpt", "value": "\n\n- a box\n- white"}]}],
        [([user("\nDescribe.", 1), {"role": "assistant", "content": "\n\n- a box\n- white"}], ["b.png"])]),
    "LLaMA-Factory alpaca": (
        [{"instruction": "<image>Name the colour.", "input": "One word.", "output": "red", "images": ["img/a.png"]}],
        [([user("Name the colour.\nOne word.", 1), {"role": "assistant", "content": "red"}], ["a.png"])]),
    "The Cauldron (images + texts)": (
        [{"images": ["img/a.png"], "texts": [{"user": "Colour?", "assistant": "red", "source": "x"},
                                             {"user": "Shape?", "assistant": "a box", "source": "x"}]}],
        [([user("Colour?", 1), {"role": "assistant", "content": "red"}, user("Shape?"),
           {"role": "assistant", "content": "a box"}], ["a.png"])]),
    "LLaMA-Factory parts with value": (
        [{"messages": [{"role": "user", "content": [{"type": "image_url", "value": "img/a.png"},
                                                    {"type": "text", "value": "Colour?"}]},
                       {"role": "assistant", "content": [{"type": "text", "value": "red"}]}]}],
        [([user("Colour?", 1), {"role": "assistant", "content": "red"}], ["a.png"])]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_counts_what_the_row_means(layout, folder):
    from test_real_vocabulary import encoder_for

    rows, meanings = LAYOUTS[layout]
    path = write_jsonl(folder / f"{abs(hash(layout))}.jsonl", rows)
    report = check(path)
    assert not report.problems and report.valid == len(rows), report.problems
    encoder = encoder_for("qwen2_vl")
    encoder.min_pixels, encoder.max_pixels = PIXELS["min_pixels"], PIXELS["max_pixels"]
    encoder.size = {"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]}
    for sample, (messages, images) in zip(report.samples, meanings):
        total, trained = expected(messages, images)
        assert (report.lengths[sample.row].total, report.trained[sample.row]) == (total, trained), layout
        item = encoder.encode(sample)
        assert item["input_ids"].shape[0] == total
        answers = [m["content"] for m in messages if m["role"] == "assistant" and m.get("loss") is not False]
        tokenizer = encoder.processor.tokenizer
        labels = [t for t in item["labels"].tolist() if t != IGNORE_INDEX]
        assert tokenizer.decode(labels) == "".join(a + "<|im_end|>" for a in answers)


def test_bare_message_lists_one_per_line(folder):
    line = [{"role": "user", "content": [{"type": "image", "image": "img/a.png"}, {"type": "text", "text": "Hue?"}]},
            {"role": "assistant", "content": "red"}]
    path = folder / "bare.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    report = check(path)
    assert report.valid == 2 and not report.problems
    assert report.lengths[1].total == expected([user("Hue?", 1), {"role": "assistant", "content": "red"}],
                                               ["a.png"])[0]


def test_per_image_sizing_keys_count_as_qwen_vl_utils_sizes(folder):
    from PIL import Image
    from qwen_vl_utils.vision_process import fetch_image

    big = png(folder / "img" / "big.png", 1200, 900)
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": str(big), "max_pixels": 50176},
                                                     {"type": "image", "image": str(big), "resized_height": 280,
                                                      "resized_width": 420}, {"type": "text", "text": "Same?"}]},
                        {"role": "assistant", "content": "yes"}]}
    report = check(write_jsonl(folder / "sized.jsonl", [row]))
    assert report.valid == 1, report.problems
    image = Image.open(big)
    by_qwen = [fetch_image({"image": image, "max_pixels": 50176, "min_pixels": 3136}, 14),
               fetch_image({"image": image, "resized_height": 280, "resized_width": 420}, 14)]
    assert report.lengths[1].visual_tokens == [(i.height // 28) * (i.width // 28) for i in by_qwen] == [54, 150]
    from test_real_vocabulary import encoder_for

    item = encoder_for("qwen2_vl").encode(report.samples[0])
    assert [int(g.prod()) // 4 for g in item["image_grid_thw"]] == [54, 150]


@pytest.mark.parametrize("row, kind, words", [
    ({"messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "x"}],
      "videos": ["clip.mp4"]}, "video-missing", "clip.mp4"),
    ({"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                             {"from": "gpt", "value": "x"}]}, "video-missing", "clip.mp4"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                                {"type": "text", "text": "What?"}]},
                   {"role": "assistant", "content": "x"}]}, "video-missing", "clip.mp4"),
    ({"messages": [{"role": "user", "content": "<audio>Who speaks?"}, {"role": "assistant", "content": "x"}],
      "audios": ["a.wav"]}, "audio", "hears"),
])
def test_missing_videos_and_audio_are_problem_rows(row, kind, words, folder):
    """A video row is read (tests/test_video_data.py); its missing file is the row's problem. Audio is refused."""
    report = check(write_jsonl(folder / f"media-{kind}-{abs(hash(json.dumps(row)))}.jsonl", [row]))
    assert report.valid == 0 and [p.kind for p in report.problems] == [kind]
    assert words in report.problems[0].reason


GROUNDING_ROW = {"messages": [{"role": "user", "content": "<image>Where is the <ref-object>?"},
                              {"role": "assistant", "content": "<ref-object><bbox>"}],
                 "images": ["img/b.png"],
                 "objects": {"ref": ["box", "box"], "bbox": [[14, 10, 70, 50]], "bbox_type": "real", "image_id": [0]}}


@pytest.mark.parametrize("model, answer", [
    # 140 x 100 image: x 14/140*1000 = 100, y 10/100*1000 = 100, 70 -> 500, 50 -> 500
    ("qwen2-vl-7b-instruct", "<|object_ref_start|>box<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"),
    # resized to 112 x 84 (smart_resize at 12544 pixels): x * 112/140, y * 84/100
    ("qwen2.5-vl-7b-instruct", "<|object_ref_start|>box<|object_ref_end|><|box_start|>(11,8),(56,42)<|box_end|>"),
    ("qwen3-vl-8b-instruct", "box[100, 100, 500, 500]"),
])
def test_grounding_objects_become_the_family_s_own_text(model, answer, folder):
    from qwen_vl_utils import smart_resize

    assert smart_resize(100, 140, factor=28, **PIXELS) == (84, 112)
    row = json.loads(json.dumps(GROUNDING_ROW))
    row["objects"]["ref"] = ["box", "box"]
    row["objects"]["bbox"] = [[14, 10, 70, 50]]
    path = write_jsonl(folder / f"ground-{model}.jsonl", [row])
    from workbench.data.validation import check_dataset

    report = check_dataset(path, model=model, **PIXELS, factor=28)
    assert report.valid == 1, report.problems
    sample = report.samples[0]
    assert sample.turns[-1].text == answer
    assert "<ref-object>" not in sample.turns[0].text and "box" in sample.turns[0].text
    assert sample.boxes[0].pixels(140, 100) == (14, 10, 70, 50)


@pytest.mark.parametrize("objects, words", [
    ({"ref": ["box"], "bbox": [[14, 10, 70, 50]]}, "placeholder"),  # two <ref-object>, one ref
    ({"ref": ["box", "box"], "bbox": [[14, 10, 700, 50]]}, "not inside image"),
    ({"ref": ["box", "box"], "bbox": [[14, 10, 70, 50]], "image_id": [3]}, "names no image"),
])
def test_grounding_mismatches_are_problems(objects, words, folder):
    row = {**GROUNDING_ROW, "objects": objects}
    report = check(write_jsonl(folder / f"badground-{abs(hash(json.dumps(objects)))}.jsonl", [row]))
    assert report.valid == 0 and report.problems[0].kind == "grounding" and words in report.problems[0].reason


def test_data_check_json_per_row_equals_the_independent_count(folder, capsys):
    """`data check --json` per_row for a preset not downloaded (the real vocabulary): every layout's
    rows in one file each, tokens and trained tokens equal to the hand count."""
    from workbench.cli.main import main

    for layout, (rows, meanings) in sorted(LAYOUTS.items()):
        path = write_jsonl(folder / f"cli-{abs(hash(layout))}.jsonl", rows)
        assert main(["data", "check", str(path), "--json", "--model", "qwen2-vl-7b-instruct",
                     "--max-pixels", str(PIXELS["max_pixels"])]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["stats"]["text_tokens"] == "exact"
        wanted = []
        for row, (messages, images) in enumerate(meanings, start=1):
            total, trained = expected(messages, images)
            wanted.append({"row": row, "tokens": total, "visual_tokens": sum(map(visual, images)),
                           "trained_tokens": trained})
        assert out["per_row"] == wanted, layout


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_trains_two_steps_on_its_answers(layout, folder, demo, demo_config, tmp_path):
    """The demo model trains 2 steps on the layout's file; the labels training builds decode to
    exactly the answers the row means (and nothing of a loss: false answer)."""
    from workbench.training import JobState, TrainingJob
    from workbench.training.inputs import build_datasets

    rows, meanings = LAYOUTS[layout]
    path = write_jsonl(folder / f"train-{abs(hash(layout))}.jsonl", rows * 2)
    config = demo_config.replace(data={"train_path": str(path), "eval_split": 0.0, "format": "auto"},
                                 training={"max_steps": 2, "save_steps": 0, "warmup_ratio": 0.0, "logging_steps": 1,
                                           "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                           "output_dir": str(tmp_path / "run")})
    train, _, processor = build_datasets(config, str(demo.model))
    answers = ["".join(m["content"] + "<|im_end|>" for m in messages
                       if m["role"] == "assistant" and m.get("loss") is not False) for messages, _ in meanings]
    for i in range(len(rows)):
        labels = [t for t in train[i]["labels"].tolist() if t != IGNORE_INDEX]
        assert processor.tokenizer.decode(labels) == answers[i], layout
    job = TrainingJob(config)
    assert job.run() == JobState.FINISHED, job.message
    losses = [json.loads(line).get("loss") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([x for x in losses if x is not None]) == 2


def test_the_format_a_check_detects_is_one_a_run_accepts(folder):
    """"Use as training data" writes the detected format into data.format: every layout's name must
    pass the settings' validation (an alpaca file was refused at Start when the settings kept their own
    list of four formats)."""
    from workbench.settings import DATA_FORMATS, RunConfig

    detected = set()
    for layout, (rows, _) in LAYOUTS.items():
        report = check(write_jsonl(folder / f"fmt-{abs(hash(layout))}.jsonl", rows))
        detected.add(report.format)
        RunConfig().replace(data={"format": report.format}).validate()
        assert check(folder / f"fmt-{abs(hash(layout))}.jsonl", format=report.format).valid == len(rows)
    assert {"alpaca", "query-response", "cauldron", "sharegpt", "swift", "messages"} <= detected <= set(DATA_FORMATS)
