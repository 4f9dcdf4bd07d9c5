"""benchmarks/gpu_check.py keeps working without a GPU: its --dry-run runs the same path at tiny shapes."""

import json

from conftest import ROOT


def test_gpu_check_dry_run_measures_every_variant_against_the_planner(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--steps", "2",
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    rows = report["rows"]
    assert report["device"] == "cpu (dry run)" and len(rows) == 12  # 2 models x 2 lengths x 3 variants
    assert any(line.startswith("model ") for line in lines) and sum(line.startswith("tiny-") for line in lines) == 12
    for row in rows:
        assert row["measured_bytes"] > 0 and row["predicted_bytes"] > 0 and row["tokens_per_s"] > 0
        assert abs(row["error"]) < 0.15, row  # the planner's terms against the tracked tensors
        assert row["terms"]["dequant_bytes"] > 0 if row["base"] == "nf4" else row["terms"]["dequant_bytes"] == 0
    # FSDP2 over the nf4 base (bf16 storage), one rank: the same forward and LoRA gradients as unsharded
    fsdp = report["fsdp_nf4"]
    assert fsdp["storage_dtype"] == "torch.bfloat16" and fsdp["packed_bytes_survive_all_gather"]
    assert fsdp["forward_max_abs_diff"] == 0 and fsdp["lora_grad_max_abs_diff"] == 0
    assert fsdp["sharded_4bit"] == fsdp["all_4bit"] > 0 and any(line.startswith("FSDP2 over nf4") for line in lines)
    by = {(r["model"], r["max_length"], r["base"], r["trained_token_loss"]): r["measured_bytes"] for r in rows}
    for model, length, _, _ in by:
        assert by[(model, length, "bf16", True)] < by[(model, length, "bf16", False)]  # smaller loss
        assert by[(model, length, "nf4", True)] < by[(model, length, "bf16", True)]  # smaller weights
