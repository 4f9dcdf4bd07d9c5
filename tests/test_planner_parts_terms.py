"""The planner's terms for what trains (issue 22) against tensors measured on CPU, as
tests/test_planner_accuracy.py checks the language model's: a fully trained part's state, and what the
vision side keeps for backward (benchmarks/planner_parts.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize("parts", [{"vision": "frozen", "merger": "full", "language": "lora"},
                                   {"vision": "full", "merger": "frozen", "language": "lora"}])
def test_a_fully_trained_part_holds_16_bytes_per_parameter(parts):
    import planner_parts

    row = planner_parts.full_state_check(parts)
    assert row["full_params"] > 0
    assert row["measured_bytes"] == 16 * row["full_params"] == row["planned_bytes"]


def test_vision_lora_stored_activations_match_measurement():
    import planner_parts

    rows = planner_parts.vision_check(({"vision": "lora", "merger": "lora", "language": "lora"},
                                       {"vision": "frozen", "merger": "lora", "language": "lora"}))
    for row in rows:
        assert abs(row["error"]) < 0.06, row


@pytest.mark.parametrize("parts", [{"vision": "frozen", "merger": "full", "language": "lora"},
                                   {"vision": "full", "merger": "frozen", "language": "lora"}])
def test_a_fully_trained_parts_stored_activations_match_measurement(parts):
    """Under autocast a full part's linears keep their inputs and a bf16 copy of their fp32 weights.
    Before: merger full planned 32,768 B against 395,264 measured; vision full 1,212,416 against 2,600,960."""
    import planner_parts

    (row,) = planner_parts.vision_check((parts,))
    assert abs(row["error"]) < 0.06, row


def test_a_trained_merger_alone_keeps_no_tower_activations():
    """Before: any trained merger counted every vision block's saved set (7B, one 1003520-pixel image,
    checkpointing on: 0.61 GiB the step never holds); the merger's own set is all that is kept."""
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest
    from workbench.planner.device_map import vision_saved_bytes
    from workbench.planner.request import layout_for, step_for

    request = PlanRequest("qwen2-vl-7b-instruct", parse_gpu_spec("1x80GiB"), recipe="merger-full")
    layout = layout_for(request)
    step = step_for(request, layout)
    tokens = 1003520 // 784
    width = 1280 * 4  # four patches' features per visual token
    # CUDA: its LayerNorm's fp32 input + mean, rstd per patch; fc1's input, GELU's input and output in bf16
    per_token = 4 * width + 8 * 4 + 2 * 3 * width
    merger_params = 2 * 1280 + (width * width + width) + (width * 3584 + 3584)  # ln_q, mlp.0, mlp.2
    assert vision_saved_bytes(layout, step) == tokens * per_token + 2 * merger_params  # + its bf16 weight copy
