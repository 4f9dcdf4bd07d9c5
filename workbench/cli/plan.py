"""``python -m workbench plan``: will a LoRA training step fit, per GPU, and with which device_map.

Exit status: 0 fits, 1 does not fit, 2 unusable input (raised as UserError).
"""

from __future__ import annotations

import json

from workbench.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="Per-GPU memory of a LoRA training step, its device_map, and what fits.",
        description="Plan the memory of one LoRA training step of a Qwen2-VL model spread over GPUs with "
                    "device_map (weights, LoRA + optimizer, activations, logits, CUDA overhead per GPU).")
    p.add_argument("--model", required=True,
                   help="Preset (qwen2-vl-2b-instruct, qwen2-vl-7b-instruct, qwen2-vl-72b-instruct), 'demo', a "
                        "local folder with config.json, or a hub id already in the local cache. Nothing is downloaded.")
    p.add_argument("--gpus", default=None,
                   help="GPUs to plan for: '4x40GiB', '2x80GB' or '40GiB,40GiB,24GiB'. Default: the GPUs "
                        "detected with nvidia-ml-py on this machine.")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="Weight dtype of the frozen base. bf16 unless the GPU lacks it (then fp16).")
    p.add_argument("--lora-rank", type=int, default=8,
                   help="LoRA rank r. Memory of the adapters grows linearly with it (small next to weights).")
    p.add_argument("--lora-targets", default="language-all-linear",
                   help="Which linears get LoRA: a preset (language-all-linear, language-attention, "
                        "language-and-merger, language-and-vision), a regex, or comma-separated names (q_proj,v_proj).")
    p.add_argument("--lora-dropout", type=float, default=0.05,
                   help="LoRA dropout; above 0 it saves a mask per LoRA input (a little activation memory).")
    p.add_argument("--batch-size", type=int, default=1,
                   help="Rows per step (per_device_train_batch_size). Activations and logits grow linearly.")
    p.add_argument("--max-length", type=int, default=2048,
                   help="Longest row in tokens, text + visual. Activations and logits grow linearly with it.")
    p.add_argument("--max-pixels", type=int, default=1003520,
                   help="Largest image area after resizing; every 28x28 pixels is one visual token "
                        "(1003520 = 1280 tokens).")
    p.add_argument("--min-pixels", type=int, default=3136, help="Smallest image area after resizing.")
    p.add_argument("--images-per-sample", type=int, default=1,
                   help="Images in one row (0 for text-only); sizes the vision tower's activations.")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="Plan without gradient checkpointing (every layer keeps all intermediates: much more memory).")
    p.add_argument("--json", action="store_true",
                   help="Print the plan as one JSON object on the last line (for scripts).")
    p.set_defaults(func=run)


def parse_targets(text: str):
    """A preset or regex stays a string; 'a,b,c' becomes a list of module names."""
    text = text.strip()
    if "," in text and not any(ch in text for ch in "*.()|[]\\"):
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def run(args) -> int:
    from workbench.hardware import detect_gpus, parse_gpu_spec
    from workbench.planner import PlanRequest, format_plan, plan_memory

    gpus = parse_gpu_spec(args.gpus) if args.gpus is not None else detect_gpus()
    if not gpus:
        raise UserError("No GPUs detected on this machine: pass --gpus, e.g. --gpus 4x40GiB.")
    request = PlanRequest(
        model=args.model, gpus=gpus, dtype=args.dtype, lora_rank=args.lora_rank,
        lora_targets=parse_targets(args.lora_targets), lora_dropout=args.lora_dropout,
        batch_size=args.batch_size, max_length=args.max_length, max_pixels=args.max_pixels,
        min_pixels=args.min_pixels, images_per_sample=args.images_per_sample,
        gradient_checkpointing=not args.no_gradient_checkpointing)
    plan = plan_memory(request)
    if args.json:
        print(json.dumps(plan.to_json()))
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1
