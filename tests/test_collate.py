import pytest

from workbench.data.collate import IGNORE_INDEX, Collator, SampleEncoder, assistant_mask
from workbench.data.sample import Sample, Turn


@pytest.fixture(scope="module")
def encoder(demo):
    from transformers import AutoProcessor

    return SampleEncoder(AutoProcessor.from_pretrained(demo.model), 512, 3136, 112 * 112)


def test_assistant_mask_on_ids():
    header, end = [1, 7, 9], 2
    ids = [1, 5, 9, 4, 2, 1, 7, 9, 30, 31, 2, 9, 1, 7, 9, 40, 2]
    mask = assistant_mask(ids, header, end)
    assert [i for i, m in enumerate(mask) if m] == [8, 9, 10, 15, 16]


def test_only_assistant_tokens_are_trained(encoder, demo):
    sample = Sample([Turn("system", "Be brief."), Turn("user", "<image>What color is the shape?"),
                     Turn("assistant", "red"), Turn("user", "And the shape?"), Turn("assistant", "circle")],
                    images=[str(demo.data / "images" / "train_0000.png")], row=1)
    item = encoder.encode(sample)
    tok = encoder.processor.tokenizer
    tokens = tok.convert_ids_to_tokens(item["input_ids"])
    trained = [t for t, label in zip(tokens, item["labels"].tolist()) if label != IGNORE_INDEX]
    assert tok.convert_tokens_to_string(trained).replace("<|im_end|>", "|") == "red|circle|"
    # the exact positions: right after each "<|im_start|>assistant\n" header
    starts = [i for i in range(len(tokens) - 2) if tokens[i] == "<|im_start|>" and tokens[i + 1] == "assistant"]
    positions = [i for i, label in enumerate(item["labels"].tolist()) if label != IGNORE_INDEX]
    assert positions[0] == starts[0] + 3 and positions[-1] == len(tokens) - 2  # last is <|im_end|>, then "\n"
    assert tokens.count("<|image_pad|>") > 0
    assert all(item["labels"][i] == IGNORE_INDEX for i, t in enumerate(tokens) if t == "<|image_pad|>")


def test_collator_pads_with_ignored_labels(encoder, demo):
    from workbench.data.formats import load_samples

    samples = load_samples(demo.train).samples[:3]
    items = [encoder.encode(s) for s in samples]
    batch = Collator(encoder.processor.tokenizer.pad_token_id)(items)
    longest = max(i["input_ids"].shape[0] for i in items)
    assert batch["input_ids"].shape == (3, longest)
    for row, item in enumerate(items):
        n = item["input_ids"].shape[0]
        assert batch["attention_mask"][row, n:].sum() == 0
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert batch["image_grid_thw"].shape == (3, 3)
    assert batch["pixel_values"].shape[0] == sum(i["pixel_values"].shape[0] for i in items)


def test_too_long_row_names_the_row(encoder, demo):
    from workbench.data.formats import load_samples

    sample = load_samples(demo.train).samples[0]
    short = SampleEncoder(encoder.processor, 10, 3136, 112 * 112)
    with pytest.raises(ValueError, match="row 1 .*max_length 10"):
        short.encode(sample)
