"""The planner under data.packing: a batch item is a sequence of max_length tokens holding several rows."""

from workbench.hardware import parse_gpu_spec
from workbench.planner import PlanRequest
from workbench.planner.request import layout_for, step_for
from workbench.planner.terms import trained_logits_bytes, visual_tokens_per_image


def _step(**kw):
    request = PlanRequest(model="qwen2-vl-7b-instruct", gpus=parse_gpu_spec("1x80GiB"), max_pixels=256 * 28 * 28,
                          max_length=4096, trained_tokens=100, **kw)
    return step_for(request, layout_for(request)), request


def test_a_packed_sequence_counts_the_images_and_answers_of_all_its_rows():
    padded, _ = _step(batch_size=4)
    packed, _ = _step(batch_size=1, packing=True)
    # the same tokens per step as 4 padded rows of max_length...
    assert packed.tokens == 4096 and padded.tokens == 4 * 4096
    # ...but 4096 // (256 image + 100 answer tokens) = 11 rows: 11 images and 11 answers per sequence
    assert packed.rows_per_item == 4096 // (visual_tokens_per_image(256 * 28 * 28) + 100) == 11
    assert packed.visual_tokens == 11 * 256 and padded.visual_tokens == 4 * 256
    vocab = 152064
    assert packed.logits_bytes(vocab) == trained_logits_bytes(11 * 100, vocab)
    assert padded.logits_bytes(vocab) == trained_logits_bytes(4 * 100, vocab)


def test_packing_never_counts_more_than_the_sequence():
    step, _ = _step(batch_size=2, packing=True, images_per_sample=0)
    assert step.rows_per_item == 4096 // 100
    assert step.visual_tokens == 0
    unpacked, _ = _step(batch_size=2)
    assert unpacked.rows_per_item == 1
