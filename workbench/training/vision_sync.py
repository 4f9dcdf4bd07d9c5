"""Every rank runs the vision tower as many times a step as the busiest rank, whatever its batch holds.

Under FSDP2 each vision block is a shard unit whose weights are gathered by a collective
each time it runs. Qwen-VL models run the tower once for a batch's images and once more for
its videos, so a rank with an image and a video makes two calls, a rank with only one of them
one, a text-only rank none: the ranks' all-gathers then pair up wrong and the run hangs (NCCL)
or aborts (gloo), the FSDP / ZeRO-3 trap with vision towers. Under DDP a rank whose tower
never ran would give the merger's LoRA weights no gradient, and DDP would wait for it.

So before each forward the ranks agree (one all-reduce of a small integer) on the most tower
calls any of them makes, at least one; a rank that makes fewer runs the tower on a dummy image
(four patches of zeros, one merged token) for each missing call, at the point where real
pixels run (after the token embeddings, before the first decoder layer, so the collectives
come in the same order on every rank), and the output joins the text embeddings multiplied
by zero: the same collectives and autograd graph on every rank, and exactly zero contribution
to the loss and to the gradients.
"""

from __future__ import annotations

DUMMY_GRID = (1, 2, 2)  # one frame of 2 x 2 patches: one token after the 2 x 2 merge
_TOWER_INPUTS = ("pixel_values", "pixel_values_videos")  # one tower call each (modeling_qwen2_vl's forward)


def tower_calls_needed(mine: int, busiest: int) -> int:
    """Dummy tower calls for a rank that makes ``mine`` real ones when the busiest rank makes
    ``busiest``: every rank makes the same number, and at least one (the tower's gradient)."""
    return max(busiest, 1) - mine


def keep_vision_tower_in_step(model) -> int:
    """Hook every Qwen-VL core (a module with ``visual`` and ``language_model``) in ``model``.

    Returns how many were hooked (0: not a vision-language model, nothing to do)."""
    hooked = 0
    for module in model.modules():
        visual, language = getattr(module, "visual", None), getattr(module, "language_model", None)
        if visual is None or language is None or not hasattr(module, "get_image_features"):
            continue
        state = {"dummies": 0}

        def before_core(_module, args, kwargs, state=state):
            mine = sum(kwargs.get(key) is not None for key in _TOWER_INPUTS)
            state["dummies"] = tower_calls_needed(mine, busiest_rank(mine, _device_of(args, kwargs)))

        def before_language(_module, args, kwargs, state=state, visual=visual):
            embeds = kwargs.get("inputs_embeds")
            if not state["dummies"] or embeds is None:
                return None
            zero = sum(run_on_dummy_image(visual, embeds.device) for _ in range(state["dummies"]))
            kwargs["inputs_embeds"] = embeds + 0.0 * zero.to(embeds.dtype)
            return args, kwargs

        module.register_forward_pre_hook(before_core, with_kwargs=True)
        language.register_forward_pre_hook(before_language, with_kwargs=True)
        hooked += 1
    return hooked


def busiest_rank(mine: int, device) -> int:
    """The most tower calls any rank makes in this forward (a collective under a launch)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mine
    calls = torch.tensor([mine], dtype=torch.int32, device=device)
    dist.all_reduce(calls, op=dist.ReduceOp.MAX)
    return int(calls.item())


def _device_of(args, kwargs):
    import torch

    # input_ids first: under NCCL the agreement's tensor must sit on the rank's GPU, as the batch does
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def run_on_dummy_image(visual, device):
    """The sum of the vision tower's outputs for a black image: its merged token features and,
    for Qwen3-VL, its deepstack features (their mergers are LoRA targets too)."""
    import torch

    embed = visual.patch_embed
    width = embed.in_channels * embed.temporal_patch_size * embed.patch_size ** 2
    t, h, w = DUMMY_GRID
    dtype = getattr(visual, "dtype", torch.float32)
    pixels = torch.zeros(t * h * w, width, dtype=dtype, device=device)
    grid = torch.tensor([DUMMY_GRID], dtype=torch.long, device=device)
    out = visual(pixels, grid_thw=grid)
    if isinstance(out, torch.Tensor):
        return out.sum()
    parts = [out.pooler_output, *(getattr(out, "deepstack_features", None) or ())]
    return sum(part.sum() for part in parts)
