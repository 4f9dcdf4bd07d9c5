"""The ranks' per-step agreement: Stop on every rank at the same step, every rank's memory in the
rows, without a blocking collective per step."""

import json

import pytest
import torch.multiprocessing as mp


def _rank(rank, world, store, out):
    import torch.distributed as dist

    from workbench.training.rank_sync import StepAgreement

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    agreement = StepAgreement(rank, world, "cpu")
    agreement.begin()
    seen = {"stopped_at": None, "memory": {}}
    for step in range(1, 9):
        asked = rank == world - 1 and step >= 3  # the Stop reaches the last rank only, during step 3
        if agreement.step(step, asked, with_memory=step % 2 == 0):
            seen["stopped_at"] = step
            seen["memory"][step] = agreement.memory(step)  # a stop logs a row: its memory is there
            break
        if step % 2 == 0:
            seen["memory"][step] = agreement.memory(step)
        else:
            assert agreement.memory(step) is None
    agreement.end()
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(seen, f)


@pytest.mark.slow  # two spawned processes: about 10 s on a quiet machine, minutes on a busy one
def test_every_rank_stops_at_the_same_step_and_rows_hold_every_ranks_memory(tmp_path):
    out = tmp_path / "seen"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"seen.{r}").read_text()) for r in range(2)]
    # asked during step 3 on rank 1 alone; read one step later, on both ranks alike
    assert [s["stopped_at"] for s in seen] == [4, 4]
    for step in ("2", "4"):
        rows = seen[0]["memory"][step]
        assert [r["rank"] for r in rows] == [0, 1]
        assert all(r["used_bytes"] > 10_000_000 and r["device"] == "cpu" and r["host"] for r in rows)
        assert all(r["peak_allocated_bytes"] is None for r in rows)  # what the CPU does not report
        assert seen[1]["memory"][step] == rows  # every rank has the same rows (only rank 0 writes them)
    assert rows[0]["used_bytes"] != rows[1]["used_bytes"]  # each rank's own figure, not one copied


def test_one_rank_reads_the_stop_one_step_late_without_waiting(tmp_path):
    """In this process (world of 1): the flag sent with step 3 is read at step 4, memory at logging steps."""
    _rank(0, 1, str(tmp_path / "store"), str(tmp_path / "seen"))
    seen = json.loads((tmp_path / "seen.0").read_text())
    assert seen["stopped_at"] == 4
    assert [r["rank"] for r in seen["memory"]["2"]] == [0] and seen["memory"]["2"][0]["used_bytes"] > 10_000_000


def test_decode_skips_ranks_that_sent_nothing():
    from workbench.training.rank_sync import decode

    values = [0, 5, -1, -1, 0, 0, 0]
    assert decode(values, [(0, "cuda:0", "a"), (1, "cuda:1", "b")]) == [
        {"device": "cuda:0", "used_bytes": 5, "peak_allocated_bytes": None, "peak_reserved_bytes": None,
         "rank": 0, "host": "a"}]
