"""Task metrics for held-out answers: one implementation each, used by evaluation during training
(``workbench.training.evaluation``) and by the Inference tab's held-out check, so the two agree.

Every metric scores one answer against its reference in 0..1, higher is better:

- exact: normalised match (case, punctuation and surrounding space ignored), for short answers;
- rouge-l: ROUGE-L F1 (Google's ``rouge-score``), for free text;
- bleu: sentence BLEU with smoothing (``nltk``, which rouge-score already installs), for free text;
- iou: grounding boxes matched one to one by IoU (``torchvision.ops.box_iou``); the score is the
  share of boxes found at IoU >= 0.5 (accuracy at 0.5), the mean IoU is reported beside it;
- cer: 1 - character error rate (``jiwer``), floored at 0, for OCR-like rows.

Words for rouge-l and bleu are runs of letters and digits, and each CJK character on its own:
rouge-score's own tokenizer keeps only a-z and 0-9, which scores every Chinese answer 0.
"""

from __future__ import annotations

import functools
import re
import statistics
from dataclasses import dataclass

from workbench.config_rules import EVAL_METRICS  # noqa: F401  (the names a config may choose)

IOU_THRESHOLD = 0.5
SHORT_ANSWER_WORDS = 4  # answers this short (median) are scored by exact match under auto
# prompts that ask to read text out of the image: scored by character error rate under auto
OCR_WORDS = re.compile(r"\bocr\b|transcribe|read (?:the|all|out)|text (?:in|on|of) the|written|识别|文字|文本", re.I)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORDS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def normalise(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


class _Words:
    """rouge-score's tokenizer interface over ``words``."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


@dataclass
class Score:
    score: float  # 0..1, higher is better
    iou: float | None = None  # grounding only: the mean IoU of the matched boxes (unmatched count 0)


def exact(prediction: str, reference: str) -> Score:
    return Score(float(normalise(prediction) == normalise(reference)))


@functools.lru_cache(maxsize=1)
def _rouge():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Words())


def rouge_l(prediction: str, reference: str) -> Score:
    return Score(float(_rouge().score(reference, prediction)["rougeL"].fmeasure))


def bleu(prediction: str, reference: str) -> Score:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis, wanted = words(prediction), words(reference)
    if not hypothesis or not wanted:
        return Score(float(hypothesis == wanted))
    order = min(4, len(wanted))  # a 2-word reference has no 4-grams: BLEU up to its own length
    weights = tuple([1 / order] * order)
    return Score(float(sentence_bleu([wanted], hypothesis, weights=weights,
                                     smoothing_function=SmoothingFunction().method1)))


def cer(prediction: str, reference: str) -> Score:
    import jiwer

    if not reference:
        return Score(float(not prediction))
    return Score(max(0.0, 1.0 - float(jiwer.cer(reference, prediction))))


def iou(prediction: str, reference: str) -> Score:
    """Boxes written in the two texts (``workbench.data.grounding.boxes_in_text``), matched one to one,
    highest IoU first; a missing or extra box counts as a miss (the share is over the larger count)."""
    import torch
    from torchvision.ops import box_iou

    from workbench.data.grounding import boxes_in_text

    found, wanted = boxes_in_text(prediction), boxes_in_text(reference)
    if not found or not wanted:
        return Score(float(not found and not wanted), float(not found and not wanted))
    # a box written backwards (x2 < x1) has no area: box_iou would return a negative "overlap"
    predicted = torch.tensor([[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d in found], dtype=torch.float64)
    overlaps = box_iou(predicted, torch.tensor(wanted, dtype=torch.float64))
    pairs = sorted(((float(overlaps[i, j]), i, j) for i in range(len(found)) for j in range(len(wanted))), reverse=True)
    used_found, used_wanted, matched = set(), set(), []
    for value, i, j in pairs:
        if i not in used_found and j not in used_wanted:
            used_found.add(i), used_wanted.add(j)
            matched.append(value)
    count = max(len(found), len(wanted))
    return Score(sum(v >= IOU_THRESHOLD for v in matched) / count, sum(matched) / count)


METRICS = {"exact": exact, "rouge-l": rouge_l, "bleu": bleu, "iou": iou, "cer": cer}


def choose_metric(samples, wanted: str = "auto") -> str:
    """The metric for these rows (``workbench.data.sample.Sample``): ``wanted`` unless auto."""
    if wanted != "auto":
        return wanted
    if any(sample.boxes for sample in samples):
        return "iou"
    if any(OCR_WORDS.search(_last_user_text(sample)) for sample in samples):
        return "cer"
    answers = [len(words(sample.answer)) for sample in samples]
    if not answers or statistics.median(answers) <= SHORT_ANSWER_WORDS:
        return "exact"
    return "rouge-l"


def _last_user_text(sample) -> str:
    return next((t.text for t in reversed(sample.turns) if t.role == "user"), "")


def score(metric: str, prediction: str, reference: str) -> Score:
    return METRICS[metric](prediction, reference)


def summary(metric: str, scores: list[Score]) -> dict:
    """The mean over rows: {"score"} (and {"iou"} for grounding); an empty list scores 0."""
    n = max(len(scores), 1)
    out = {"score": sum(s.score for s in scores) / n}
    if metric == "iou":
        out["iou"] = sum(s.iou or 0.0 for s in scores) / n
    return out
