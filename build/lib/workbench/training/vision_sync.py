"""Every rank runs the vision tower every step, whether its batch holds images or not.

Under FSDP2 each vision block is a shard unit whose weights are gathered by a collective
when it runs. A rank whose batch is text-only would skip those collectives while the other
ranks wait in them, and the run hangs (the FSDP / ZeRO-3 trap with vision towers). Under DDP
the merger's LoRA weights would get no gradient on that rank, and DDP would wait for it.

So on a text-only batch the tower runs on a dummy image (four patches of zeros, one merged
token), at the point where real images run (after the token embeddings, before the first
decoder layer, so the collectives come in the same order on every rank), and its output
joins the text embeddings multiplied by zero: the same collectives and the same autograd
graph on every rank, and exactly zero contribution to the loss and to the gradients.
"""

from __future__ import annotations

DUMMY_GRID = (1, 2, 2)  # one frame of 2 x 2 patches: one token after the 2 x 2 merge
_IMAGE_KEYS = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs")


def keep_vision_tower_in_step(model) -> int:
    """Hook every Qwen2-VL core (a module with ``visual`` and ``language_model``) in ``model``.

    Returns how many were hooked (0: not a vision-language model, nothing to do)."""
    hooked = 0
    for module in model.modules():
        visual, language = getattr(module, "visual", None), getattr(module, "language_model", None)
        if visual is None or language is None or not hasattr(module, "get_image_features"):
            continue
        seen = {"images": False}

        def before_core(_module, args, kwargs, seen=seen):
            seen["images"] = any(kwargs.get(key) is not None for key in _IMAGE_KEYS)

        def before_language(_module, args, kwargs, seen=seen, visual=visual):
            embeds = kwargs.get("inputs_embeds")
            if seen["images"] or embeds is None:
                return None
            features = run_on_dummy_image(visual, embeds.device)
            kwargs["inputs_embeds"] = embeds + 0.0 * features.sum().to(embeds.dtype)
            return args, kwargs

        module.register_forward_pre_hook(before_core, with_kwargs=True)
        language.register_forward_pre_hook(before_language, with_kwargs=True)
        hooked += 1
    return hooked


def run_on_dummy_image(visual, device):
    """The vision tower's output for a black 28 x 28 image (its merged token features)."""
    import torch

    embed = visual.patch_embed
    width = embed.in_channels * embed.temporal_patch_size * embed.patch_size ** 2
    t, h, w = DUMMY_GRID
    dtype = getattr(visual, "dtype", torch.float32)
    pixels = torch.zeros(t * h * w, width, dtype=dtype, device=device)
    grid = torch.tensor([DUMMY_GRID], dtype=torch.long, device=device)
    out = visual(pixels, grid_thw=grid)
    return out.pooler_output if hasattr(out, "pooler_output") else out
