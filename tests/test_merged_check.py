"""The held-out check compares base, adapter and the merged export on the same rows: merged and adapter
must give the same answers (issue 24: the three agree where they must)."""

import json

from conftest import run_cli


def test_the_merged_export_answers_the_held_out_rows_as_the_adapter(trained_run, tmp_path):
    out = tmp_path / "merged"
    exported = run_cli("export", "--adapter", trained_run.output_dir, "--out", out, "--merge", "--dtype", "fp32")
    assert exported.returncode == 0, exported.stderr[-2000:]
    result = run_cli("infer", "--adapter", trained_run.output_dir, "--dataset", "demo", "--limit", 8,
                     "--merged", out, "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report["rows"]) == 8
    assert report["merged_agrees_with_adapter"] == 1.0
    assert [r["merged"] for r in report["rows"]] == [r["adapter"] for r in report["rows"]]
    assert report["merged_accuracy"] == report["adapter_accuracy"] and report["merged_score"] == report["adapter_score"]
    # the base answers differently: the comparison could tell the merged model from the base
    assert any(r["merged"] != r["base"] for r in report["rows"])


def test_an_adapter_export_is_not_a_merged_model(trained_run, tmp_path):
    out = tmp_path / "adapter-only"
    assert run_cli("export", "--adapter", trained_run.output_dir, "--out", out).returncode == 0
    result = run_cli("infer", "--adapter", trained_run.output_dir, "--dataset", "demo", "--limit", 2, "--merged", out)
    assert result.returncode == 2 and "export the run with --merge first" in result.stderr
    assert "Traceback" not in result.stderr
