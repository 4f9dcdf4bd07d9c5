"""Per-GPU memory of one LoRA step under each way of training: device_map, DDP, FSDP2.

device_map is the packer (``device_map.pack``/``evaluate``): layers spread over the GPUs
of one process. DDP and FSDP2 run one process per GPU, each with the whole batch's
activations and logits; they differ in the weights each GPU keeps:

    ddp   whole model + LoRA states + gradient buckets          (terms.ddp_bucket_bytes)
    fsdp  1/N of weights and LoRA states + the gathered units   (terms.fsdp_shard_bytes,
          + a 4-bit base's quantisation constants, whole     terms.fsdp_gathered_bytes,
                                                                 terms.quant_state_bytes)

Both add NCCL's buffers (terms.nccl_bytes) to the CUDA overhead. Each strategy answers
``rows`` (per-GPU breakdowns for one node) and ``fits``, so searches and suggestions work
on any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workbench.planner import terms
from workbench.planner.device_map import DeviceLoad, Step
from workbench.planner.layout import Layout
from workbench.planner.search import need_bytes, packs

ROOT_KINDS = ("vision_in", "vision_pos", "merger", "rotary")  # what accelerate leaves to FSDP's root unit


def whole_model(layout: Layout, step: Step) -> dict:
    """The breakdown of one GPU holding every unit: what a DDP replica needs before buckets."""
    load = DeviceLoad()
    for unit in layout.units:
        load.add(unit, layout, step)
    return load.breakdown(layout, step, layout.tied)


def ddp_row(layout: Layout, step: Step, world_size: int) -> dict:
    row = whole_model(layout, step)
    comm = terms.ddp_bucket_bytes(layout.lora_params, world_size)
    return _with_comm(row, comm, world_size)


def fsdp_row(layout: Layout, step: Step, world_size: int) -> dict:
    # the trained-token loss runs lm_head inside the forward under FSDP2 (workbench.training.loss)
    row = whole_model(layout, replace(step, lm_head_in_forward=True))
    # a 4-bit base: the packed weights are sharded, their quantisation constants stay whole on each GPU
    state = layout.quant_state_bytes
    row["weights_bytes"] = terms.fsdp_shard_bytes(layout.weight_bytes - state, world_size) + state
    row["lora_bytes"] = terms.fsdp_shard_bytes(terms.lora_state_bytes(layout.lora_params), world_size)
    comm = terms.fsdp_gathered_bytes(**gathered_parts(layout)) if world_size > 1 else 0
    return _with_comm(row, comm, world_size)


def gathered_parts(layout: Layout) -> dict:
    """The unit sizes ``terms.fsdp_gathered_bytes`` takes, read off the layout."""
    by_kind: dict[str, list] = {}
    for unit in layout.units:
        by_kind.setdefault(unit.kind, []).append(unit)
    biggest = max(by_kind["layer"] + by_kind.get("vision_block", []), key=lambda u: u.weight_bytes)
    embed = sum(u.weight_bytes for u in by_kind.get("embed", []))
    tail = sum(u.weight_bytes for u in by_kind.get("norm", []) + by_kind.get("lm_head", []))
    if layout.tied:  # accelerate puts the shared embed_tokens/lm_head in the tail unit
        tail, embed = tail + embed, 0
    root = sum(u.weight_bytes for k in ROOT_KINDS for u in by_kind.get(k, []))
    return {"root": root, "embed": embed, "tail": tail, "layer": biggest.weight_bytes,
            "layer_lora_params": biggest.lora_params}


def _with_comm(row: dict, comm: int, world_size: int) -> dict:
    dynamic = row["activation_bytes"] + row["logits_bytes"] + row["dequant_bytes"] + comm
    row = dict(row, comm_bytes=comm,
               overhead_bytes=terms.overhead_bytes(dynamic) + terms.nccl_bytes(world_size))
    row["total_bytes"] = sum(row[k] for k in ("weights_bytes", "lora_bytes", "activation_bytes", "logits_bytes",
                                              "dequant_bytes", "comm_bytes", "overhead_bytes"))
    return row


@dataclass(frozen=True)
class DeviceMap:
    """One process; the packer's map (the plan itself uses accelerate's map, see plan.planned_map)."""

    nodes: int = 1
    name: str = "device_map"

    def world_size(self, gpus_per_node: int) -> int:
        return gpus_per_node

    def fits(self, layout: Layout, step: Step, caps: list[int]) -> bool:
        return packs(layout, step, caps)

    def need(self, layout: Layout, step: Step, caps: list[int]) -> tuple[int, list[dict], bool]:
        return need_bytes(layout, step, caps)


@dataclass(frozen=True)
class Replicated:
    """DDP: one process per GPU on every node, each a full replica."""

    nodes: int = 1
    name: str = "ddp"

    def world_size(self, gpus_per_node: int) -> int:
        return self.nodes * gpus_per_node

    def rows(self, layout: Layout, step: Step, caps: list[int]) -> list[dict]:
        return [ddp_row(layout, step, self.world_size(len(caps)))] * len(caps)

    def fits(self, layout: Layout, step: Step, caps: list[int]) -> bool:
        return _all_fit(self.rows(layout, step, caps), caps)

    def need(self, layout: Layout, step: Step, caps: list[int]) -> tuple[int, list[dict], bool]:
        rows = self.rows(layout, step, caps)
        return sum(r["total_bytes"] for r in rows), rows, _all_fit(rows, caps)


@dataclass(frozen=True)
class Sharded(Replicated):
    """FSDP2: one process per GPU on every node, weights and LoRA states sharded over all of them."""

    name: str = "fsdp"

    def rows(self, layout: Layout, step: Step, caps: list[int]) -> list[dict]:
        return [fsdp_row(layout, step, self.world_size(len(caps)))] * len(caps)


def _all_fit(rows: list[dict], caps: list[int]) -> bool:
    return all(r["total_bytes"] <= c for r, c in zip(rows, caps))


def strategy(name: str, nodes: int = 1):
    """The memory model of ``name`` (device_map, ddp, fsdp) for ``nodes`` nodes."""
    return {"device_map": DeviceMap, "ddp": Replicated, "fsdp": Sharded}[name](nodes=nodes)
