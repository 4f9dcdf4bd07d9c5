"""What the ranks of a launch agree on during training, in one collective per step that nobody waits for.

Every rank must stop at the same step (a rank that stops alone leaves the others waiting in
the next gradient all-reduce until the collective timeout), and rank 0's metrics rows hold
every rank's memory. Done naively that is a blocking all-reduce of the stop flag after every
step, plus an ``all_gather_object`` (pickles, two collectives) at every logging step: on the
2-core demo DDP run they cost about a quarter of the throughput against a bare Trainer script
(docs/scale-out.md has the profile).

Here each step starts ONE non-blocking all-reduce of a small int64 vector: slot 0 the stop flag
(SUM: any rank asking), then three slots per rank for its memory sample (used, peak allocated,
peak reserved; each rank fills its own, the others stay 0). The result is read one step later,
when it has long arrived, so Stop takes effect one step after it is seen, on every rank at the
same step, and the step never waits for the collective. At a logging step the metrics row
needs this step's memory now: that step's result is waited for in ``on_log`` (the logging
step already synchronises for Trainer's loss all-gather). Host names and devices, which never
change, are gathered once when training begins.
"""

from __future__ import annotations

import socket

NONE = -1  # a memory figure the device does not report (the CPU's peaks)
FIELDS = ("used_bytes", "peak_allocated_bytes", "peak_reserved_bytes")


def own_sample(device: str) -> dict | None:
    """This rank's memory sample for its own device (the CPU process on a CPU run)."""
    import torch

    from workbench.hardware import sample_memory

    rows = sample_memory()
    if torch.cuda.is_available():
        rows = [m for m in rows if m.get("device") == device]
    return rows[0] if rows else None


def encode(vector, rank: int, sample: dict | None) -> None:
    if sample is None:
        return
    for i, key in enumerate(FIELDS):
        value = sample.get(key)
        vector[1 + 3 * rank + i] = NONE if value is None else int(value)


def decode(values: list[int], places: list[tuple[int, str, str]]) -> list[dict]:
    """Rows of ``sample_memory``'s shape, one per rank that sent one; ``places``: (rank, device, host)."""
    rows = []
    for rank, device, host in places:
        figures = values[1 + 3 * rank: 4 + 3 * rank]
        if not any(figures):
            continue  # this rank sent no sample
        row = {"device": device, **{key: (None if v == NONE else v) for key, v in zip(FIELDS, figures)}}
        rows.append({**row, "rank": rank, "host": host})
    return rows


class StepAgreement:
    """One rank's side of the per-step collective (see the module docstring)."""

    def __init__(self, rank: int, world: int, device: str):
        self.rank, self.world, self.device = rank, world, device
        self.places: list[tuple[int, str, str]] = []
        self._pending = None  # (work handle, tensor, step, carries memory)
        self._result: tuple[int, list[int]] | None = None  # (step, values) of the newest finished collective

    def begin(self) -> None:
        """Once, on every rank, before the first step: who runs where."""
        import torch.distributed as dist

        mine = (self.rank, self.device, socket.gethostname())
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, mine)
        self.places = [tuple(place) for place in gathered]

    def step(self, step: int, stop_here: bool, with_memory: bool) -> bool:
        """At the end of ``step`` on every rank: read the previous step's answer (True: some rank
        asked to stop, every rank sees it now), then send this step's stop flag and memory."""
        import torch
        import torch.distributed as dist

        agreed = False
        if self._pending is not None:
            agreed = self._finish()[0] > 0
        vector = torch.zeros(1 + 3 * self.world, dtype=torch.int64)
        vector[0] = int(stop_here)
        if with_memory or agreed:  # a stop logs a row at this step: it needs this step's memory
            encode(vector, self.rank, own_sample(self.device))
        # gloo reduces CPU tensors; under nccl the flag rides on the CPU group of the same backend string
        handle = dist.all_reduce(vector, op=dist.ReduceOp.SUM, async_op=True)
        self._pending = (handle, vector, step)
        return agreed

    def memory(self, step: int) -> list[dict] | None:
        """Every rank's memory sent with ``step`` (waits for that collective), or None when it carried none."""
        if self._pending is not None and self._pending[2] == step:
            self._finish(keep_pending_flag=True)
        if self._result is None or self._result[0] != step:
            return None
        rows = decode(self._result[1], self.places)
        return rows or None

    def end(self) -> None:
        """Every rank started the same collectives: finish the last one before the process group is used again."""
        if self._pending is not None:
            self._finish()

    def _finish(self, keep_pending_flag: bool = False) -> list[int]:
        handle, vector, step = self._pending
        handle.wait()
        values = vector.tolist()
        self._result = (step, values)
        if keep_pending_flag:
            # the memory was needed now; the stop flag in it is still read at the next step
            self._pending = (_Done(), vector, step)
        else:
            self._pending = None
        return values


class _Done:
    def wait(self):
        return True
