"""Metric rows -> the pandas frames the Training tab plots, decimated so a tick stays cheap.

A long run logs thousands of rows; a browser redrawing all of them every second is what
makes peers' dashboards crawl. Each series keeps at most ``max_points`` evenly spaced
points, always including its first and newest, so the curve's shape and its live end
survive while the payload stays bounded.
"""

from __future__ import annotations

import pandas as pd

GIB = 1024**3
MAX_POINTS = 400
LOSS_COLUMNS = ["step", "loss", "series"]
MEMORY_COLUMNS = ["step", "GiB", "series"]
SCORE_COLUMNS = ["step", "score", "series"]
CHECKPOINT_COLUMNS = ["checkpoint", "step", "eval score", "eval loss", "best"]


def decimate(items: list, max_points: int = MAX_POINTS) -> list:
    """At most ``max_points`` items, evenly spaced, first and last kept."""
    if len(items) <= max_points:
        return list(items)
    stride = (len(items) - 1) / (max_points - 1)
    return [items[round(i * stride)] for i in range(max_points)]


def loss_frame(rows: list[dict], max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Train loss and eval loss against step, one 'series' column for the plot's colour."""
    train = [(r["step"], r["loss"], "train") for r in rows if r.get("kind", "train") == "train" and "loss" in r]
    evals = [(r["step"], r["eval_loss"], "eval") for r in rows if "eval_loss" in r]
    data = decimate(train, max_points) + decimate(evals, max_points)
    return pd.DataFrame(data, columns=LOSS_COLUMNS)


def score_frame(rows: list[dict], max_points: int = MAX_POINTS) -> pd.DataFrame:
    """The task metric of each evaluation against step (0..1, higher is better), named by its metric;
    with grounding rows, the mean IoU beside accuracy at 0.5."""
    evals = [r for r in rows if isinstance(r.get("eval_score"), (int, float))]
    data = [(r["step"], r["eval_score"], r.get("eval_metric") or "score") for r in evals]
    data += [(r["step"], r["eval_iou"], "mean IoU") for r in evals if isinstance(r.get("eval_iou"), (int, float))]
    return pd.DataFrame(decimate(data, 2 * max_points), columns=SCORE_COLUMNS)


def checkpoint_frame(checkpoints: list[tuple[int, object]], rows: list[dict], best: str | None) -> pd.DataFrame:
    """One line per complete checkpoint ((step, path) pairs): the evaluation at its step, the best marked."""
    evals = {r.get("step"): r for r in rows if "eval_loss" in r or "eval_score" in r}
    data = []
    for step, path in checkpoints:
        row = evals.get(step, {})
        name = getattr(path, "name", str(path))
        score, loss = row.get("eval_score"), row.get("eval_loss")
        data.append((name, step, None if score is None else round(score, 4), None if loss is None else round(loss, 4),
                     "★ best" if name == best else ""))
    return pd.DataFrame(data, columns=CHECKPOINT_COLUMNS)


def memory_frame(rows: list[dict], predicted: dict[str, int] | None = None,
                 max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Memory per device against the training step, plus flat predicted-peak lines.

    Against the step, not the clock: a run resumed a day later continues where it stopped
    instead of after a long flat gap. Series per device: what nvidia-smi shows ('used'; on
    CPU the process's resident memory) and this process's torch peaks ('peak allocated',
    'peak reserved'). A run of several processes samples every rank: its series are named by
    rank ('rank 1 cuda:1 used'), and a predicted peak (per GPU) is drawn once for every
    device name the ranks report.
    """
    sampled = [r for r in rows if r.get("memory")]
    if not sampled:
        return pd.DataFrame([], columns=MEMORY_COLUMNS)
    points: dict[str, list] = {}
    for row in sampled:
        step = row.get("step", 0)
        for m in row["memory"]:
            device = m.get("device", "?")
            label = "resident" if device == "cpu" else "used"
            where = f"rank {m['rank']} {device}" if isinstance(m.get("rank"), int) else device
            for key, name in (("used_bytes", label), ("peak_allocated_bytes", "peak allocated"),
                              ("peak_reserved_bytes", "peak reserved")):
                if m.get(key) is not None:
                    points.setdefault(f"{where} {name}", []).append((step, m[key] / GIB))
    data = [(step, gib, series) for series, values in points.items() for step, gib in decimate(values, max_points)]
    first, last = sampled[0].get("step", 0), sampled[-1].get("step", 0)
    seen = {m.get("device") for row in sampled for m in row["memory"]}
    # a plan made for other devices (say 4 GPUs while this run is on the CPU) draws nothing
    for device, total in ((d, t) for d, t in (predicted or {}).items() if d in seen):
        data += [(first, total / GIB, f"{device} predicted peak"), (max(last, first + 1), total / GIB,
                                                                    f"{device} predicted peak")]
    return pd.DataFrame(data, columns=MEMORY_COLUMNS)


def predicted_peaks(plan: dict | None) -> dict[str, int]:
    """{device: bytes} from a planner result (``Plan.to_json()``: devices[*].total_bytes)."""
    if not isinstance(plan, dict):
        return {}
    peaks = {}
    for device in plan.get("devices") or []:
        if isinstance(device, dict) and device.get("device") and isinstance(device.get("total_bytes"), (int, float)):
            peaks[str(device["device"])] = int(device["total_bytes"])
    return peaks
