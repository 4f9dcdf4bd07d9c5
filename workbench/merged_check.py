"""The merged export against the adapter it came from, on the held-out rows the adapter was checked on.

A merged model (``python -m workbench export --merge``) must answer as base + adapter does: the same
greedy answers on the same rows, up to the rounding of folding the update into the weights in the
export's dtype. ``add_merged`` answers each row of a held-out check with the merged folder, loaded as a
plain model (no adapter), and says how often it agrees with the adapter and how it scores.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import UserError


def add_merged(result: dict, samples: list, merged_dir: str | Path, comparer, decoding=None) -> dict:
    """``result`` (``inference.heldout_check``'s) with ``merged`` answers per row, ``merged_accuracy``,
    ``merged_score`` (the same metric) and ``merged_agrees_with_adapter`` (share of rows with the adapter's
    very answer). ``comparer`` gives the run's settings, so the rows are encoded as for the adapter."""
    from workbench.export import read_manifest
    from workbench.inference import Comparer
    from workbench.metrics import score, summary

    folder = Path(merged_dir).expanduser()
    manifest = read_manifest(folder)
    if manifest is None or manifest["kind"] != "merged":
        raise UserError(f"{folder} is not a merged export of the workbench (no workbench-export.json of kind merged): "
                        "export the run with --merge first, then pass that folder.")
    merged = Comparer(str(folder), None, comparer.config)
    by_row = {s.row: s for s in samples}
    answers = [merged.answer(by_row[r["row"]], False, decoding)["text"] for r in result["rows"]]
    scores = [score(result["metric"], text, r["expected"]) for text, r in zip(answers, result["rows"])]
    for r, text, s in zip(result["rows"], answers, scores):
        r.update({"merged": text, "merged_match": text == r["expected"], "merged_score": s.score})
    n = max(len(answers), 1)
    result.update({"merged_dir": str(folder),
                   "merged_accuracy": sum(r["merged_match"] for r in result["rows"]) / n,
                   "merged_agrees_with_adapter": sum(r["merged"] == r["adapter"] for r in result["rows"]) / n,
                   **{f"merged_{k}": v for k, v in summary(result["metric"], scores).items()}})
    return result
