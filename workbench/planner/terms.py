"""The memory terms of one LoRA training step, each a small formula you can check by hand.

Symbols: T = batch x sequence tokens seen by the language model, H hidden size, I MLP
intermediate size, q = heads x head_dim, kv = KV heads x head_dim, n_h heads, V vocab,
r LoRA rank, a = bytes per activation element (2 for bf16/fp16, 4 for fp32).

The per-layer inventory below is what autograd saves in transformers 5 + peft for
Qwen2-VL with SDPA attention; it was read off saved-tensor hooks and matches the CPU
measurement of ``benchmarks/planner_accuracy.py`` to the byte for the saved set. The
backward transient and the CUDA overheads are estimates (see docs/planner-accuracy.md).
"""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3

# Per GPU in use: CUDA context + cuBLAS/cuDNN workspaces of a torch process (H100/A100,
# CUDA 12). Weights + this reproduce the published bf16 inference figures within 2%.
CUDA_CONTEXT_BYTES = 512 * MIB
# Caching-allocator slack (reserved minus allocated) as a share of the step's dynamic bytes.
ALLOCATOR_RESERVE_FRACTION = 0.05
# fp32 LoRA weight + fp32 gradient + AdamW exp_avg + exp_avg_sq (peft keeps adapters in
# fp32 when the base is bf16/fp16: autocast_adapter_dtype=True).
LORA_BYTES_PER_PARAM = 4 + 4 + 8
# Bytes per element of the dropout mask peft's lora_dropout saves: a bool mask on CUDA
# (native_dropout), an fp32 noise tensor on CPU.
DROPOUT_MASK_BYTES = {"cuda": 1, "cpu": 4}
# Loss on fp32-upcast logits: log_softmax output (4) saved, then in backward the NLL
# gradient (4) and the log_softmax gradient (4) are alive together.
LOGITS_BYTES_PER_ELEMENT = 12
IMAGE_FACTOR = 28  # Qwen2-VL and Qwen2.5-VL: one visual token per 28 x 28 pixels (patch 14, merge 2); Qwen3-VL: 32


def visual_tokens_per_image(max_pixels: int, factor: int = IMAGE_FACTOR) -> int:
    """Tokens the LLM sees for one image: at most max_pixels // factor^2 (the family's pixels per token).

    smart_resize keeps the area at or below max_pixels in whole factor x factor blocks.
    """
    return max(1, int(max_pixels) // (factor * factor))


def video_groups(frames: int, temporal_patch: int = 2) -> int:
    """Temporal patches of a video of ``frames`` frames: each ``temporal_patch`` (2) frames are one; an odd
    last frame is repeated to fill its pair, as the family's video processor pads it."""
    return -(-int(frames) // temporal_patch) if frames > 0 else 0


def visual_tokens_per_video(frames: int, max_pixels: int, factor: int = IMAGE_FACTOR, temporal_patch: int = 2) -> int:
    """Tokens the LLM sees for one video: temporal patches x tokens of one frame at max_pixels,
    ceil(frames / 2) x max_pixels // factor^2 (frames / 2 x (h/14)(w/14)/4 for Qwen2-VL)."""
    return video_groups(frames, temporal_patch) * visual_tokens_per_image(max_pixels, factor) if frames > 0 else 0


def vision_patches(visual_tokens: int, merge_size: int = 2) -> int:
    """Patches the vision tower sees: tokens x merge^2 (4x the LLM's image or video tokens; a video's
    patch spans its temporal patch of 2 frames, so patches = frames / 2 x (h/14)(w/14))."""
    return visual_tokens * merge_size * merge_size


def lora_parameters(in_features: int, out_features: int, rank: int) -> int:
    """LoRA A (r x in) + B (out x r): r x (in + out)."""
    return rank * (in_features + out_features)


def lora_state_bytes(lora_params: int) -> int:
    """LoRA weights, gradients and AdamW states: 16 bytes per LoRA parameter (all fp32)."""
    return LORA_BYTES_PER_PARAM * lora_params


def decoder_layer_saved_bytes(tokens: int, hidden: int, intermediate: int, q_dim: int, kv_dim: int,
                              heads: int, lora_inputs: list[int], rank: int, dropout: bool,
                              device_kind: str = "cuda", act_bytes: int = 2, qk_norm: bool = False,
                              kv_heads: int = 0) -> int:
    """Bytes autograd keeps for one decoder layer's backward, for T tokens.

    T x [ 2 x (4H + 4)                      two RMSNorms: fp32 input + rsqrt
        + a(2q + 2kv) + 4 n_h               SDPA: rotated q, k, v, output; fp32 logsumexp
        + 3 a I                             SwiGLU: gate out, silu out, up out
        + sum over LoRA linears of (4 d_in + m d_in + 4 r)
        + [4(q + kv) + 4(n_h + n_kv)] ]     Qwen3's QK-norm: fp32 q and k + an rsqrt per head
    where d_in is the linear's input width (H, or I for down_proj), 4 d_in the fp32 copy
    the LoRA A matmul saves, m the dropout mask bytes (0 without dropout).
    """
    mask = DROPOUT_MASK_BYTES[device_kind] if dropout else 0
    per_token = 2 * (4 * hidden + 4) + act_bytes * (2 * q_dim + 2 * kv_dim) + 4 * heads + 3 * act_bytes * intermediate
    per_token += sum((4 + mask) * d_in + 4 * rank for d_in in lora_inputs)
    if qk_norm:
        per_token += 4 * (q_dim + kv_dim) + 4 * (heads + kv_heads)
    return tokens * per_token


def layer_backward_transient_bytes(tokens: int, hidden: int, intermediate: int) -> int:
    """Gradient buffers alive while one layer back-propagates: T x (6 I + 10 H).

    (fp32 + bf16 gradients of the MLP intermediate, and of the H-wide inputs.) Fitted on
    the CPU tracker; it over-estimates small layers slightly.
    """
    return tokens * (6 * intermediate + 10 * hidden)


def checkpoint_boundary_bytes(tokens: int, hidden: int, act_bytes: int = 2) -> int:
    """Gradient checkpointing keeps each decoder layer's input: T x H x a."""
    return tokens * hidden * act_bytes


def generation_cache_bytes(tokens: int, kv_dim: int, act_bytes: int = 2) -> int:
    """One decoder layer's KV cache while evaluation answers a held-out row (batch 1, prompt + answer
    tokens): 2 x T x kv_dim x a. Not a term of its own in a plan: evaluation runs between steps, when
    the step's activations are freed, and for every Qwen-VL shape this is below the layer input that
    gradient checkpointing keeps for a training row as long (``checkpoint_boundary_bytes``:
    kv_dim is H/7 to H/4), so the training step's peak bounds the evaluation's."""
    return 2 * tokens * kv_dim * act_bytes


def rotary_bytes(tokens: int, head_dim: int, act_bytes: int = 2) -> int:
    """cos and sin of the multimodal RoPE, shared by the layers on a device: 2 x T x head_dim x a."""
    return 2 * tokens * head_dim * act_bytes


def final_norm_bytes(tokens: int, hidden: int) -> int:
    """The final RMSNorm (not checkpointed) keeps its fp32 input and rsqrt: T x (4H + 4)."""
    return tokens * (4 * hidden + 4)


def input_embedding_grad_bytes(tokens: int, hidden: int) -> int:
    """enable_input_require_grads makes the embedding output a leaf; its gradient: T x H x 4."""
    return tokens * hidden * 4


def logits_bytes(tokens: int, vocab: int) -> int:
    """Peak of the model's own loss on the lm_head device: T x V x 12 (see LOGITS_BYTES_PER_ELEMENT).

    The bf16 logits (T x V x 2) are freed before backward when the trainer drops the
    model outputs, so they do not add to the backward peak.
    """
    return tokens * vocab * LOGITS_BYTES_PER_ELEMENT


# workbench.training.loss puts at most this many logits (tokens x vocab) through the
# cross-entropy at once: 441 tokens of Qwen2-VL's vocabulary of 152064, 768 MiB at 12 bytes.
LOSS_CHUNK_ELEMENTS = 1 << 26


def loss_chunk_tokens(vocab: int) -> int:
    """Trained tokens per chunk of the trained-token loss: LOSS_CHUNK_ELEMENTS // V."""
    return max(1, LOSS_CHUNK_ELEMENTS // max(1, vocab))


def trained_logits_bytes(trained_tokens: int, vocab: int, lm_head_in_forward: bool = False) -> int:
    """Peak of the loss on trained tokens only (N of them in the batch): 12 x min(N, chunk) x V.

    Only the trained positions reach lm_head, a chunk at a time (recomputed in backward).
    Under FSDP2 lm_head runs inside the forward on all N positions at once; when they span
    more than one chunk their bf16 logits and, in backward, their bf16 gradient add 4 x N x V.
    """
    chunk = loss_chunk_tokens(vocab)
    peak = LOGITS_BYTES_PER_ELEMENT * min(trained_tokens, chunk) * vocab
    if lm_head_in_forward and trained_tokens > chunk:
        peak += 4 * trained_tokens * vocab
    return peak


def vision_forward_bytes(patches: int, embed_dim: int, mlp_dim: int, patch_values: int,
                         act_bytes: int = 2, mlp_activations: int = 2) -> int:
    """A frozen vision tower keeps nothing for backward; its forward peak is one block's:

    P x (6 x patch_values           fp32 pixel values + their cast copy
         + a x 5E                   residual, q/k/v
         + a x m x mlp)             the MLP's wide tensors: fc1 output and its activation (m = 2),
                                    or SwiGLU's gate, up and product (m = 3, Qwen2.5-VL)
    """
    return patches * (6 * patch_values + act_bytes * 5 * embed_dim + act_bytes * mlp_activations * mlp_dim)


def vision_trained_bytes(patches: int, embed_dim: int, mlp_dim: int, depth: int, lora_inputs: list[int],
                         rank: int, gradient_checkpointing: bool, device_kind: str = "cuda",
                         dropout: bool = True, act_bytes: int = 2, mlp_saved: int = 3) -> int:
    """Vision tower with LoRA: saved activations per block, P x (a(6E + s mlp) + LoRA copies), s the
    MLP-wide tensors autograd keeps (3 for a GELU MLP, 4 for SwiGLU);

    with checkpointing depth x P x E x a boundaries plus one block's saved set.
    """
    mask = DROPOUT_MASK_BYTES[device_kind] if dropout else 0
    block = patches * (act_bytes * (6 * embed_dim + mlp_saved * mlp_dim)
                       + sum((4 + mask) * d + 4 * rank for d in lora_inputs))
    if gradient_checkpointing:
        return depth * patches * embed_dim * act_bytes + block
    return depth * block


def merger_saved_bytes(visual_tokens: int, width: int, lora_inputs: list[int], rank: int, device_kind: str = "cuda",
                       dropout: bool = True, act_bytes: int = 2, input_needs_grad: bool = True) -> int:
    """A merger on a trained vision side keeps, per visual token (W = E x merge^2 patches' features):
    T_v x (a W                          the activation's input between its two linears
           + sum over LoRA linears of (4 + m) d_in + 4 r)   as in the blocks
    less the first linear's dropout mask (m d_in) when its input needs no gradient (a frozen tower).
    """
    mask = DROPOUT_MASK_BYTES[device_kind] if dropout else 0
    saved = act_bytes * width + sum((4 + mask) * d + 4 * rank for d in lora_inputs)
    if lora_inputs and not input_needs_grad:
        saved -= mask * lora_inputs[0]
    return visual_tokens * saved


# Bytes per element of the input a norm keeps in a fully trained part run under autocast: CUDA
# autocast runs layer_norm in fp32 (an fp32 copy of its input), CPU's keeps the bf16 input.
AUTOCAST_NORM_INPUT_BYTES = {"cuda": 4, "cpu": 2}


def full_vision_saved_bytes(patches: int, embed_dim: int, mlp_dim: int, heads: int, depth: int, patch_values: int,
                            weight_params: int, gradient_checkpointing: bool, device_kind: str = "cuda",
                            act_bytes: int = 2, mlp_saved: int = 3) -> int:
    """A fully trained tower (fp32 weights under bf16 autocast, as Trainer runs a bf16 base) keeps:

    a x N                              the autocast copy of every trained weight (N parameters): cached for
                                       the whole forward, kept for backward by each linear and the patch conv
    + a x P x patch_values             the patch conv's input, cast
    + P x 2 x head_dim x 4             the rotary cos and sin (fp32), shared by the blocks
    + per block P x [2 (n E + 8)       two norms: input (n bytes, AUTOCAST_NORM_INPUT_BYTES) + mean, rstd
                     + a 2E            the inputs of qkv and fc1 (the norms' outputs)
                     + a 6E + 4 n_h    attention: qkv's output (v), rotated q and k, output; fp32 logsumexp
                     + a E             proj's input
                     + a s mlp]        the MLP-wide tensors, fc2's input among them (s as for LoRA)
    with checkpointing depth x P x E x a boundaries plus one block's set instead of depth blocks'.
    """
    norm = AUTOCAST_NORM_INPUT_BYTES[device_kind] if act_bytes == 2 else act_bytes
    block = patches * (2 * (norm * embed_dim + 8) + act_bytes * (9 * embed_dim + mlp_saved * mlp_dim) + 4 * heads)
    blocks = depth * patches * embed_dim * act_bytes + block if gradient_checkpointing else depth * block
    rotary = patches * 2 * (embed_dim // heads) * 4
    return act_bytes * weight_params + act_bytes * patches * patch_values + rotary + blocks


def full_merger_saved_bytes(visual_tokens: int, width: int, merge_size: int, weight_params: int,
                            device_kind: str = "cuda", act_bytes: int = 2, mlp_saved: int = 2) -> int:
    """A fully trained merger under autocast keeps, per visual token (W = E x merge^2 patches' features):

    T_v x (n W + 8 merge^2             its norm, over each patch: input (n bytes, as in the blocks) + mean, rstd
           + a W                       the first linear's input
           + a s W)                    the activation's input and output (s = 2: the second linear's input)
    + a x N                            the autocast copy of its N trained parameters
    """
    norm = AUTOCAST_NORM_INPUT_BYTES[device_kind] if act_bytes == 2 else act_bytes
    per_token = norm * width + 8 * merge_size**2 + act_bytes * (1 + mlp_saved) * width
    return visual_tokens * per_token + act_bytes * weight_params


def deepstack_bytes(visual_tokens: int, hidden: int, levels: int, act_bytes: int = 2) -> int:
    """Qwen3-VL's deepstack: the features of ``levels`` vision blocks, each merged to one hidden-wide
    vector per visual token, are kept from the tower's forward until decoder layers 0..levels-1
    add them in: levels x visual tokens x H x a, on the tower's device."""
    return levels * visual_tokens * hidden * act_bytes


def vision_attention_flops(patches: int, patches_per_image: int, embed_dim: int, depth: int,
                           full_blocks: int, window_patches: int = 0) -> float:
    """Attention matmuls of one tower pass (scores and their product with V): 4 x P x context x E
    per block, where the context is the image's patches in a full-attention block and a window's
    in a windowed one (Qwen2.5-VL: 64 patches, all but its 4 full blocks)."""
    windowed = depth - full_blocks if window_patches else 0
    context_sum = (depth - windowed) * patches_per_image + windowed * min(window_patches, patches_per_image)
    return 4.0 * patches * embed_dim * context_sum


def overhead_bytes(dynamic_bytes: int, device_kind: str = "cuda") -> int:
    """CUDA context + allocator slack: 512 MiB + 5% of the device's dynamic bytes (no CUDA context on the CPU)."""
    context = CUDA_CONTEXT_BYTES if device_kind == "cuda" else 0
    return context + int(ALLOCATOR_RESERVE_FRACTION * dynamic_bytes)


QUANTIZATIONS = ("none", "nf4", "int8")


def quantized_4bit_bytes(numel: int) -> int:
    """NF4 with double quantisation (bitsandbytes, blocks of 64): 4 bits per weight, one 8-bit
    absmax per block, one fp32 constant per 256 blocks, and the two code tables (16 + 256 fp32):
    W/2 + W/64 + 4 W/16384 + 1088 (rounded up), 0.516 bytes per weight (bitsandbytes 0.50, the
    tests compare it with what bitsandbytes holds, to the byte)."""
    blocks = -(-numel // 64)
    return -(-numel // 2) + blocks + 4 * -(-blocks // 256) + 1088


def quantized_int8_bytes(numel: int, rows: int) -> int:
    """LLM.int8 (bitsandbytes Linear8bitLt): one byte per weight plus an fp32 scale per output row."""
    return numel + 4 * rows


def quantized_weight_bytes(quantization: str, numel: int, rows: int) -> int:
    """Bytes of one quantised linear weight (``rows`` output features) under ``quantization``."""
    if quantization == "nf4":
        return quantized_4bit_bytes(numel)
    if quantization == "int8":
        return quantized_int8_bytes(numel, rows)
    raise ValueError(f"not a quantisation: {quantization!r}")


def quant_state_bytes(quantization: str, numel: int, rows: int) -> int:
    """The part of a quantised weight that is not the packed weight itself: nf4's absmax constants
    and code tables (``quantized_4bit_bytes`` less W/2), int8's row scales (4 x rows). FSDP2 shards
    the packed weight, but bitsandbytes keeps these on the module, whole on every GPU."""
    if quantization == "nf4":
        return quantized_4bit_bytes(numel) - -(-numel // 2)
    if quantization == "int8":
        return 4 * rows
    raise ValueError(f"not a quantisation: {quantization!r}")


def dequantization_bytes(largest_numel: int, act_bytes: int = 2) -> int:
    """The dequantisation working set: bitsandbytes turns a quantised weight back into the compute
    dtype for each matmul (forward, and again for the input gradient in backward), one linear at a
    time, so the largest quantised weight on a device in the compute dtype: W_max x a."""
    return largest_numel * act_bytes


# ---- per strategy: DDP and FSDP2 (device_map uses the terms above, placed by layer) ----------
# NCCL's own buffers, allocated outside torch's allocator when a process first communicates:
# 544 MB for a group of 2 ranks, 688 MB for more, measured through PyTorch on 4 x A100 with
# NVLink (github.com/NVIDIA/nccl/issues/964).
NCCL_BYTES_TWO_RANKS = 544 * 1000**2
NCCL_BYTES_MORE_RANKS = 688 * 1000**2


def nccl_bytes(world_size: int) -> int:
    """NCCL communicator buffers on each GPU: 0 alone, 544 MB for 2 ranks, 688 MB beyond."""
    if world_size <= 1:
        return 0
    return NCCL_BYTES_TWO_RANKS if world_size == 2 else NCCL_BYTES_MORE_RANKS


def ddp_bucket_bytes(lora_params: int, world_size: int) -> int:
    """DDP's gradient buckets: one more fp32 copy of every trainable gradient, 4 x L.

    The reducer allocates its buckets for all trainable parameters when it wraps the model
    (gradient_as_bucket_view off, accelerate's default); a single process is not wrapped.
    """
    return 4 * lora_params if world_size > 1 else 0


def fsdp_shard_bytes(total_bytes: int, world_size: int) -> int:
    """What FSDP2 keeps of a model on each GPU between uses: ceil(bytes / world size).

    fully_shard splits every parameter along dim 0 (padding the last shard), so each rank
    holds 1/N of the frozen weights, and likewise 1/N of the LoRA weights, gradients and
    AdamW states (pass ``lora_state_bytes(L)`` for those).
    """
    return -(-total_bytes // world_size)


def fsdp_gathered_bytes(root: int, embed: int, tail: int, layer: int, layer_lora_params: int) -> int:
    """Full (unsharded) parameters alive at once on every GPU under FSDP2, as accelerate wraps
    Qwen2-VL (each decoder layer and vision block a unit, embed_tokens a unit, [norm, lm_head]
    one unit kept gathered from the end of forward through its backward, the rest the root):

        root + layer' + max(layer', tail, embed),  layer' = layer + 8 x layer_lora_params

    root: the root's own parameters (patch embedding, merger), gathered for the whole step.
    One decoder layer runs while the next is prefetched; lm_head's unit is gathered while the
    last layer is prefetched at the start of backward; embed_tokens is gathered again at the
    very end of backward while layer 0 finishes. Never two of tail, embed and a second layer
    at once, so the largest counts. layer': the layer's bf16 weights plus its LoRA weights
    and, before the reduce-scatter, their unsharded fp32 gradients (4 + 4 bytes each).
    With tied embeddings ``tail`` includes embed_tokens and ``embed`` is 0.
    """
    gathered_layer = layer + 8 * layer_lora_params
    return root + gathered_layer + max(gathered_layer, tail, embed)
