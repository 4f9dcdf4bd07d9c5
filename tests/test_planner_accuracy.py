"""The CPU accuracy benchmark in CI size: measured live tensor bytes vs the planner's terms."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_cpu_activation_and_logits_terms_match_measurement():
    import planner_accuracy

    rows = planner_accuracy.cpu_check(lengths=(192, 384), vocabs=(4096,))
    assert len(rows) == 4
    for row in rows:
        assert abs(row["error"]) < 0.06, row
    # Doubling the length doubles the measured peak (the planner's linear scaling).
    on = [r["measured_bytes"] for r in rows if r["checkpointing"]]
    assert 1.8 < on[1] / on[0] < 2.2
