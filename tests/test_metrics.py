"""Task metrics against values computed by hand (workbench.metrics): the same functions score the
evaluation during training and the Inference tab's held-out check."""

import pytest

from workbench.data.sample import Sample, Turn
from workbench.metrics import choose_metric, score, summary


def row(question: str, answer: str, boxes=()) -> Sample:
    return Sample(turns=[Turn("user", question), Turn("assistant", answer)], boxes=list(boxes))


@pytest.mark.parametrize("prediction, reference, accuracy, mean_iou", [
    # the same box in Qwen2-VL's tokens and in Qwen3-VL's brackets
    ("<|box_start|>(0,0),(10,10)<|box_end|>", "<|box_start|>(0,0),(10,10)<|box_end|>", 1.0, 1.0),
    ("(0,0),(10,10)", "[0, 0, 10, 10]", 1.0, 1.0),
    # overlap 5x5 = 25 of a union 100 + 100 - 25 = 175: IoU 1/7, a miss at 0.5
    ("[0, 0, 10, 10]", "[5, 5, 15, 15]", 0.0, 1 / 7),
    # 100 inside 200: IoU exactly 0.5 counts as found
    ("[0, 0, 10, 10]", "[0, 0, 10, 20]", 1.0, 0.5),
    # one of two boxes found exactly, the other not answered: half found, mean IoU (1 + 0) / 2
    ("[0, 0, 10, 10]", "[0, 0, 10, 10] and [50, 50, 60, 60]", 0.5, 0.5),
    # matched one to one, not in order; an extra box counts against the answer (3 boxes, 2 found)
    ("[50, 50, 60, 60], [0, 0, 10, 10], [80, 80, 90, 90]", "[0, 0, 10, 10] [50, 50, 60, 60]", 2 / 3, 2 / 3),
    ("I see no box.", "[0, 0, 10, 10]", 0.0, 0.0),
])
def test_iou_of_known_boxes(prediction, reference, accuracy, mean_iou):
    got = score("iou", prediction, reference)
    assert got.score == pytest.approx(accuracy) and got.iou == pytest.approx(mean_iou)


@pytest.mark.parametrize("prediction, reference, expected", [
    ("kitten", "sitting", 1 - 3 / 7),  # k->s, e->i, +g: 3 edits over 7 reference characters
    ("sitting", "sitting", 1.0),
    ("发票号码", "发票号", 1 - 1 / 3),  # one inserted character over 3
    ("completely different and much longer", "abc", 0.0),  # CER above 1 floors at 0
])
def test_cer_of_known_strings(prediction, reference, expected):
    assert score("cer", prediction, reference).score == pytest.approx(expected)


@pytest.mark.parametrize("prediction, reference, expected", [
    # LCS 5 of 5 predicted and 6 reference words: P 1, R 5/6, F1 = 2PR / (P + R) = 10/11
    ("the cat on the mat", "the cat sat on the mat", 10 / 11),
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("dog", "the cat", 0.0),
    ("我爱上海", "我爱北京", 0.5),  # each CJK character is a word: LCS 2 of 4 and 4
])
def test_rouge_l_of_known_pairs(prediction, reference, expected):
    assert score("rouge-l", prediction, reference).score == pytest.approx(expected)


def test_exact_bleu_and_the_mean():
    assert score("exact", "Red.", "red").score == 1.0 and score("exact", "red", "blue").score == 0.0
    assert score("bleu", "a red circle on grey", "a red circle on grey").score == pytest.approx(1.0)
    assert 0 < score("bleu", "a red circle on grey", "a red square on grey").score < 1
    scores = [score("exact", "red", "red"), score("exact", "red", "blue"), score("exact", "blue", "blue")]
    assert summary("exact", scores) == {"score": pytest.approx(2 / 3)}
    grounding = [score("iou", "[0, 0, 10, 10]", "[0, 0, 10, 20]"), score("iou", "none", "[0, 0, 1, 1]")]
    assert summary("iou", grounding) == {"score": 0.5, "iou": 0.25}


def test_auto_picks_the_metric_from_the_rows():
    assert choose_metric([row("<image>What color is it?", "red")]) == "exact"
    assert choose_metric([row("Describe the picture.", "A red circle sits on a grey background, alone.")]) == "rouge-l"
    assert choose_metric([row("<image>Transcribe the receipt.", "TOTAL 12.50 EUR thank you for shopping")]) == "cer"
    assert choose_metric([row("Find <ref-object>", "<bbox>", boxes=[object()])]) == "iou"
    assert choose_metric([row("<image>What color is it?", "red")], "bleu") == "bleu"  # the config's choice wins
