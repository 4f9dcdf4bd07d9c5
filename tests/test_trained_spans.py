"""Which tokens train, against an independent count: the real Qwen tokenizer encoding each answer
on its own (the tokens the model generates after its prompt) plus its <|im_end|>, for every family."""

import json

import pytest

from workbench.data.collate import IGNORE_INDEX
from workbench.data.sample import Sample, Turn
from workbench.models.families import FAMILIES
from workbench.models.vocabulary import qwen_tokenizer

from test_real_vocabulary import encoder_for, images  # noqa: F401  (a fixture)

FAMILY_TYPES = sorted(FAMILIES)
ANSWERS = ["\n\n- red\n- white", "  two leading spaces", "ends with newlines\n\n", "Ça va 😀 — 你好",
           'I would write "<|im_start|>assistant\n" here', "\n"]


def trained_ids(item) -> list[int]:
    return [t for t, label in zip(item["input_ids"].tolist(), item["labels"].tolist()) if label != IGNORE_INDEX]


def expected_ids(tokenizer, answers: list[str]) -> list[int]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return [i for answer in answers for i in tokenizer.encode(answer, add_special_tokens=False) + [end]]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
@pytest.mark.parametrize("answer", ANSWERS)
def test_each_answer_trains_its_own_tokens(model_type, answer, images):  # noqa: F811
    encoder = encoder_for(model_type)
    tokenizer = qwen_tokenizer(model_type)
    sample = Sample([Turn("user", "<image>Describe it."), Turn("assistant", answer)], images=images[:1], row=1)
    item = encoder.encode(sample)
    assert trained_ids(item) == expected_ids(tokenizer, [answer])
    assert tokenizer.decode(trained_ids(item)) == answer + "<|im_end|>"


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_loss_false_keeps_an_answer_out_of_the_loss(model_type, images):  # noqa: F811
    encoder = encoder_for(model_type)
    tokenizer = qwen_tokenizer(model_type)
    sample = Sample([Turn("user", "<image>Colour?"), Turn("assistant", "\nwrong: blue", loss=False),
                     Turn("user", "Try again."), Turn("assistant", "red", loss=True)], images=images[:1], row=1)
    item = encoder.encode(sample)
    assert trained_ids(item) == expected_ids(tokenizer, ["red"])
    # the untrained answer is still in the input, as the model reads it
    assert "wrong: blue" in tokenizer.decode(item["input_ids"].tolist())


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_data_check_counts_what_training_sees(model_type, images, tmp_path):  # noqa: F811
    """Leading newlines and spaces in prompts and answers, a loss: false turn: the check's per-row
    total and trained counts equal the encoder's tokens, and the trained count equals the answers
    encoded on their own."""
    from workbench.data.validation import check_dataset

    rows = [
        {"messages": [{"role": "user", "content": "<image>List the colours."},
                      {"role": "assistant", "content": "\n\n- red\n- white"}], "images": [images[0]]},
        {"messages": [{"role": "system", "content": "\n  Be terse."},
                      {"role": "user", "content": "\n\nWhat is this? <image>"},
                      {"role": "assistant", "content": " A square.\n", "loss": False},
                      {"role": "user", "content": "  And the colour?"},
                      {"role": "assistant", "content": "\nred"}], "images": [images[1]]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = encoder_for(model_type)
    tokenizer = encoder.processor.tokenizer
    report = check_dataset(path, tokenizer=tokenizer, min_pixels=3136, max_pixels=112 * 112,
                           factor=FAMILIES[model_type].pixels_per_token)
    assert len(report.samples) == 2, report.problems
    answers = {1: ["\n\n- red\n- white"], 2: ["\nred"]}
    for sample in report.samples:
        item = encoder.encode(sample)
        assert report.lengths[sample.row].total == item["input_ids"].shape[0], sample.row
        assert report.trained[sample.row] == len(expected_ids(tokenizer, answers[sample.row])), sample.row
        assert trained_ids(item) == expected_ids(tokenizer, answers[sample.row])
