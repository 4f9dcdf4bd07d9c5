"""What trains, measured: the planner's terms for fully trained parts and for the vision side's
stored activations against real tensors on CPU (issue 22).

    python benchmarks/planner_parts.py

Vision activations: a tiny random bf16 Qwen2-VL (``planner_accuracy.tiny_config``) prepared by
the workbench's own ``apply_lora`` for each part setting; one image of 256 patches goes through
the vision tower (blocks and merger) under ``torch.autograd.graph.saved_tensors_hooks``, and
the distinct storages autograd keeps for backward (parameters excluded) are added up. The
planner's figure is ``device_map.vision_saved_bytes`` for the same shapes (CPU dropout masks).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

GRID = (1, 16, 16)  # 256 patches, 64 merged tokens


def saved_bytes(module, *args, **kwargs) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during ``module(*args)``."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args, **kwargs)
    return sum(kept.values())


def tiny_model(parts: dict, dtype=torch.bfloat16, checkpointing: bool = False):
    """(peft model, folder with its config, settings) for ``parts``: the workbench's own preparation."""
    import planner_accuracy
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.settings import LoraSettings
    from workbench.training.lora import apply_lora

    config = planner_accuracy.tiny_config(1024)
    config.text_config.bos_token_id = config.text_config.eos_token_id = 0
    folder = tempfile.mkdtemp(prefix="planner-parts-")
    config.save_pretrained(folder)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    settings = LoraSettings(rank=8, alpha=16, dropout=0.05, **parts)
    model = apply_lora(model, settings, checkpointing)
    model.train()
    return model, folder, settings


def vision_check(part_settings=({"vision": "lora", "merger": "lora", "language": "lora"},
                                 {"vision": "frozen", "merger": "lora", "language": "lora"},
                                 {"vision": "frozen", "merger": "full", "language": "lora"},
                                 {"vision": "full", "merger": "frozen", "language": "lora"})) -> list[dict]:
    from workbench.hardware import Gpu
    from workbench.planner import PlanRequest
    from workbench.planner.device_map import vision_saved_bytes
    from workbench.planner.request import layout_for, step_for

    rows = []
    for parts in part_settings:
        model, folder, settings = tiny_model(parts)
        visual = model.get_base_model().model.visual
        pixels = torch.randn(GRID[0] * GRID[1] * GRID[2], 3 * 2 * 14 * 14, dtype=torch.bfloat16)
        # a fully trained part's fp32 copy meets bf16 activations only under autocast, as Trainer runs it
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="full" in parts.values()):
            measured = saved_bytes(visual, pixels, grid_thw=torch.tensor([GRID]))
        tokens = GRID[0] * GRID[1] * GRID[2] // 4
        request = PlanRequest(folder, [Gpu(0, "bench", 1 << 40)], max_length=512, max_pixels=tokens * 784,
                              gradient_checkpointing=False, lora_rank=8, lora_dropout=0.05, **parts)
        layout = layout_for(request)
        planned = vision_saved_bytes(layout, step_for(request, layout, device_kind="cpu"))
        rows.append({**parts, "measured_bytes": measured, "planned_bytes": planned,
                     "error": planned / measured - 1 if measured else float(planned != 0)})
        print(f"vision {parts['vision']:6s} merger {parts['merger']:6s}: measured {measured:9d} B  planned "
              f"{planned:9d} B  error {100 * rows[-1]['error']:+.1f}%", flush=True)
    return rows


def video_check(frames=(2, 4, 8), parts=None) -> list[dict]:
    """A video of ``frames`` frames of 224 x 224 (16 x 16 patches a frame, one temporal patch per 2 frames)
    through the trained vision side, measured as ``vision_check`` measures an image, against the planner's
    video term (issue 21): ``vision_saved_bytes`` for a row with that video and no image."""
    from workbench.hardware import Gpu
    from workbench.planner import PlanRequest
    from workbench.planner.device_map import vision_saved_bytes
    from workbench.planner.request import layout_for, step_for

    parts = parts or {"vision": "lora", "merger": "lora", "language": "lora"}
    model, folder, _ = tiny_model(parts)
    visual = model.get_base_model().model.visual
    rows = []
    for count in frames:
        grid = (count // 2, 16, 16)
        pixels = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14, dtype=torch.bfloat16)
        measured = saved_bytes(visual, pixels, grid_thw=torch.tensor([grid]))
        request = PlanRequest(folder, [Gpu(0, "bench", 1 << 40)], max_length=4096, images_per_sample=0,
                              video_frames=count, video_max_pixels=224 * 224, gradient_checkpointing=False,
                              lora_rank=8, lora_dropout=0.05, **parts)
        layout = layout_for(request)
        planned = vision_saved_bytes(layout, step_for(request, layout, device_kind="cpu"))
        rows.append({"frames": count, "measured_bytes": measured, "planned_bytes": planned,
                     "error": planned / measured - 1})
        print(f"video of {count} frames: measured {measured:9d} B  planned {planned:9d} B  error "
              f"{100 * rows[-1]['error']:+.1f}%", flush=True)
    return rows


if __name__ == "__main__":
    vision_check()
    video_check()


def full_state_check(parts: dict) -> dict:
    """Bytes a fully trained part holds after one AdamW step (its fp32 copy, .grad, exp_avg, exp_avg_sq),
    read off the tensors, against the planner's 16 bytes per parameter for it."""
    import planner_accuracy

    from workbench.hardware import Gpu
    from workbench.planner import PlanRequest
    from workbench.planner.request import layout_for

    model, folder, _ = tiny_model(parts)
    full = [p for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = planner_accuracy.image_inputs(256, 1024)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch).loss.backward()
    optimizer.step()
    measured = sum(p.nbytes + p.grad.nbytes + sum(s.nbytes for s in optimizer.state[p].values() if s.dim())
                   for p in full)

    def lora_bytes(**override):
        request = PlanRequest(folder, [Gpu(0, "bench", 1 << 40)], max_length=512, **{**parts, **override})
        return 16 * layout_for(request).lora_params

    frozen = {part: "frozen" for part, mode in parts.items() if mode == "full"}
    planned = lora_bytes() - lora_bytes(**frozen)
    row = {**parts, "measured_bytes": measured, "planned_bytes": planned, "full_params": sum(p.numel() for p in full)}
    print(f"full state {parts}: measured {measured} B planned {planned} B", flush=True)
    return row
