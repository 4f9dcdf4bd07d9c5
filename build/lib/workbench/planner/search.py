"""The searches every planner part shares: the largest value that still fits, and the
device_map packer's questions (does it pack, how many bytes does it need, how much
headroom can every GPU keep). ``plan`` and ``suggest`` both import from here."""

from __future__ import annotations

from workbench.planner.device_map import HUGE, Step, evaluate, pack
from workbench.planner.layout import Layout

# GPU sizes (GiB) a "use larger GPUs" suggestion tries, smallest first.
LARGER_GPUS_GIB = (24, 32, 40, 48, 64, 80, 94, 141, 192)


def largest_fitting(fits, low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n) (fits is monotone), or None."""
    if low > high or not fits(low):
        return None
    if fits(high):
        return high
    good, bad = low, high
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def packs(layout: Layout, step: Step, caps: list[int]) -> bool:
    """Does the packer fit this step on these GPUs?"""
    return pack(layout, step, caps)[1]


def need_bytes(layout: Layout, step: Step, caps: list[int]) -> tuple[int, list[dict], bool]:
    """(bytes needed across all GPUs, per-GPU rows, fits) with overflow on a virtual extra GPU."""
    device_map, _ = pack(layout, step, list(caps) + [HUGE])
    rows, _ = evaluate(layout, device_map, step, len(caps) + 1)
    fits = not rows[-1]["total_bytes"] and all(r["total_bytes"] <= c for r, c in zip(rows, caps))
    return sum(r["total_bytes"] for r in rows), rows[:-1] + ([rows[-1]] if rows[-1]["total_bytes"] else []), fits


def balanced_headroom(layout: Layout, step: Step, caps: list[int]) -> int:
    """The largest free memory every GPU can keep while the step still packs (0 if none).

    Packing against capacity minus this headroom spreads the layers so the GPUs end up
    about equally full, instead of filling the first GPUs to the brim.
    """
    if not packs(layout, step, caps):
        return 0
    low, high = 0, min(caps)
    while high - low > 16 * 1024**2:
        mid = (low + high) // 2
        low, high = (mid, high) if packs(layout, step, [c - mid for c in caps]) else (low, mid)
    return low
