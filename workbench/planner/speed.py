"""Expected speed of each strategy relative to device_map on the same GPUs (docs/planner-strategies.md).

One micro-step (the per-GPU batch) costs the same FLOPs under every strategy. device_map
runs it on one GPU at a time; DDP and FSDP2 run N of them at once (N GPUs over all nodes)
and pay for communication on top, which this model does not hide behind compute (so
their speeds are lower bounds):

    compute   = flops / (peak bf16 FLOP/s x MFU)
    dequant   = a 4-bit base's weights turned back into the compute dtype before each matmul, once
                per pass (forward, input gradient, and the recomputed forward with checkpointing):
                passes x Q x (0.5 + a) bytes read and written / HBM bandwidth (Q quantised weights)
    ddp comm  = all-reduce of the fp32 LoRA gradients:      2 (N-1)/N x 4 L bytes
    fsdp comm = all-gather of every unit in forward, again of the units backward passes
                through (decoder layers, embeddings), reduce-scatter of LoRA gradients:
                (N-1)/N x (W + W_layers + W_embed + 4 L) bytes
    time      = compute + dequant + comm / link bandwidth
    speed     = N x (compute + dequant) / time     (device_map: 1)

Dequantisation costs every strategy the same per micro-step, so it does not change which one
is fastest by itself; it is work FSDP2's communication is measured against.

The link is the intra-node bandwidth on one node; across nodes a ring crosses the
network, so the slower of intra- and inter-node bandwidth sets the pace.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.hardware import LINK_GBPS, Gpu, find_card
from workbench.planner import terms
from workbench.planner.device_map import Step
from workbench.planner.layout import Layout

# Share of the peak FLOP/s a LoRA step reaches (model FLOPs utilisation). It scales every
# strategy's compute alike, so it only matters against communication time.
MFU = 0.4
# An unnamed GPU (a size such as 40GiB): A100-class compute over PCIe without NVLink.
UNKNOWN_TFLOPS = 312.0
UNKNOWN_LINK = "pcie4"
# HBM bandwidth (GB/s) by card, datasheet figures: bitsandbytes' dequantisation is a memory-bound
# kernel. An unknown card: the A100 40GB's.
HBM_GBPS = {"A100-40GB": 1555.0, "A100-80GB": 2039.0, "A800-40GB": 1555.0, "A800-80GB": 2039.0,
            "H100-80GB": 3350.0, "H800-80GB": 3350.0, "H20-96GB": 4000.0, "RTX4090-24GB": 1008.0,
            "RTX3090-24GB": 936.0, "RTX5090-32GB": 1792.0, "L40-48GB": 864.0, "A6000-48GB": 768.0,
            "A10-24GB": 600.0}
UNKNOWN_HBM_GBPS = 1555.0
GB = 1000**3


@dataclass(frozen=True)
class Links:
    """The inputs of the speed model: GB/s within a node and between nodes, peak TFLOPS per GPU."""

    intra_node_gbps: float
    inter_node_gbps: float
    tflops: float
    known_cards: bool
    hbm_gbps: float = UNKNOWN_HBM_GBPS

    def bandwidth(self, nodes: int) -> float:
        """Bytes per second a ring collective moves per GPU."""
        gbps = self.intra_node_gbps if nodes == 1 else min(self.intra_node_gbps, self.inter_node_gbps)
        return gbps * GB

    def to_json(self) -> dict:
        return {"intra_node_gbps": self.intra_node_gbps, "inter_node_gbps": self.inter_node_gbps,
                "tflops_per_gpu": self.tflops, "mfu": MFU, "cards_known": self.known_cards,
                "hbm_gbps": self.hbm_gbps}


def links_for(gpus: list[Gpu], intra_node_gbps: float | None, inter_node_gbps: float) -> Links:
    """Bandwidths and compute for these GPUs: the card table's figures unless overridden.
    Mixed GPUs run at the pace of the slowest."""
    cards = [_card(g) for g in gpus]
    known = all(c is not None for c in cards)
    tflops = min(c.bf16_tflops if c else UNKNOWN_TFLOPS for c in cards)
    intra = intra_node_gbps if intra_node_gbps is not None else min(
        c.link_gbps if c else LINK_GBPS[UNKNOWN_LINK] for c in cards)
    hbm = min(HBM_GBPS.get(c.name, UNKNOWN_HBM_GBPS) if c else UNKNOWN_HBM_GBPS for c in cards)
    return Links(float(intra), float(inter_node_gbps), float(tflops), known, float(hbm))


def _card(gpu: Gpu):
    try:
        return find_card(gpu.name)
    except Exception:  # an ambiguous detected name: treat as unknown
        return None


def step_flops(layout: Layout, step: Step) -> float:
    """Matmul FLOPs of one micro-step on one GPU.

    Language model: 2 x (decoder layer parameters + lm_head's V x H) per token and pass;
    passes = forward, backward for the inputs (frozen weights need no weight gradient),
    and with gradient checkpointing the recomputed forward: 3 (2 without checkpointing).
    Vision tower: 2 x its parameters per patch, plus its attention (``terms.vision_attention_flops``:
    the whole image in full-attention blocks, a window in Qwen2.5-VL's windowed ones), forward
    only when frozen (3 passes with LoRA): the tower's passes follow the tower's training, the
    merger's its own or the tower's. The language model's attention scores (2 x T x q per layer
    and token) are left out: under 5% at 2048 tokens.
    """
    s = layout.shape
    language = sum(u.numel for u in layout.units if u.kind == "layer") + s.vocab * s.hidden
    tower = sum(u.numel for u in layout.units if u.kind in ("vision_in", "vision_block"))
    merger = sum(u.numel for u in layout.units if u.kind == "merger")
    passes = 3 if step.gradient_checkpointing else 2
    # a trained merger alone back-propagates through itself only: the tower's output needs no gradient
    tower_passes = passes if layout.tower_trained else 1
    merger_passes = passes if layout.vision_trained else 1
    patches = step.patches(s.merge_size)
    # the tower attends within one image, and within one temporal patch (frame pair) of a video
    attention = 0.0
    for count, per_item in ((step.images_per_sample, step.visual_tokens_per_image),
                            (step.video_groups, step.video_tokens_per_group)):
        if count and per_item:
            item = per_item * s.merge_size**2
            attention += terms.vision_attention_flops(step.batch_size * count * item, item, s.vision_embed,
                                                      s.vision_depth, s.full_attention_blocks, s.window_patches)
    return (2.0 * language * step.tokens * passes + (2.0 * tower * patches + attention) * tower_passes
            + 2.0 * merger * patches * merger_passes)


def dequant_bytes(layout: Layout, step: Step) -> float:
    """HBM bytes bitsandbytes moves per micro-step to dequantise a 4-bit base: each quantised weight
    read packed (half a byte) and written in the compute dtype (a bytes), once per pass (the
    language model's passes, as in ``step_flops``). 0 for an unquantised base."""
    passes = 3 if step.gradient_checkpointing else 2
    return passes * layout.quantized_numel * (0.5 + step.act_bytes)


def comm_bytes(name: str, layout: Layout, world_size: int) -> float:
    """Bytes each GPU sends per micro-step under strategy ``name`` (ring collectives)."""
    if world_size <= 1 or name == "device_map":
        return 0.0
    share = (world_size - 1) / world_size
    lora_grads = 4 * layout.lora_params
    if name == "ddp":
        return 2 * share * lora_grads
    regathered = sum(u.weight_bytes for u in layout.units if u.kind in ("layer", "embed"))
    if layout.tower_trained:
        regathered += sum(u.weight_bytes for u in layout.units if u.kind == "vision_block")
    return share * (layout.weight_bytes + regathered + lora_grads)


def timing(name: str, layout: Layout, step: Step, world_size: int, nodes: int, links: Links) -> dict:
    """compute_seconds, dequant_seconds, comm_seconds and relative_speed (device_map = 1) of one strategy."""
    compute = step_flops(layout, step) / (links.tflops * 1e12 * MFU)
    dequant = dequant_bytes(layout, step) / (links.hbm_gbps * GB)
    comm = comm_bytes(name, layout, world_size) / links.bandwidth(nodes)
    parallel = 1 if name == "device_map" else world_size
    busy = compute + dequant
    return {"compute_seconds": compute, "dequant_seconds": dequant, "comm_seconds": comm,
            "relative_speed": parallel * busy / (busy + comm),
            "comm_bytes_per_step": int(comm_bytes(name, layout, world_size))}
