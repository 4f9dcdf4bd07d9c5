"""``python -m workbench plan``: will a LoRA training step fit, per GPU, and how to train: device_map,
DDP or FSDP2 on these GPUs and nodes, with the fastest that fits recommended.

Exit status: 0 the chosen strategy fits, 1 it does not, 2 unusable input (raised as UserError).
"""

from __future__ import annotations

import json



def register(subparsers) -> None:
    from workbench.planner.request import STRATEGIES, request_defaults

    d = request_defaults()
    p = subparsers.add_parser(
        "plan", help="Per-GPU memory of a LoRA training step under device_map, DDP and FSDP2, and the fastest that fits.",
        description="Plan the memory of one LoRA training step of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model on your GPUs and nodes with "
                    "device_map (one process, layers spread over the GPUs), DDP (a replica per GPU) and FSDP2 "
                    "(weights sharded over every GPU): weights, LoRA + optimizer, activations, logits, gathered "
                    "layers, CUDA overhead per GPU, expected speed of each, and the fastest one that fits.")
    p.add_argument("--model", required=True,
                   help="Preset (qwen2-vl-2b/7b/72b-instruct, qwen2.5-vl-3b/7b/32b/72b-instruct, "
                        "qwen3-vl-2b/4b/8b/32b-instruct), a demo, a local folder with config.json, or a hub id "
                        "already in the local cache. Nothing is downloaded.")
    p.add_argument("--gpus", default=None,
                   help="The GPUs of one node: sizes ('4x40GiB', '2x80GB', '40GiB,40GiB,24GiB') or cards "
                        "('4xA800-40GB', '8xH100', '2x4090': the memory the driver reports for them, e.g. 39.59 GiB "
                        "for a 40 GB A100/A800), or 'cpu' (this machine's memory). Default: the GPUs detected on this "
                        "machine, or cpu where it has none.")
    p.add_argument("--nodes", type=int, default=d["nodes"],
                   help="Nodes of such GPUs for ddp/fsdp (device_map always runs on one node). Default 1.")
    p.add_argument("--strategy", default=d["strategy"], choices=STRATEGIES,
                   help="auto (default): the fastest strategy that fits; or plan one: device_map, ddp, fsdp.")
    p.add_argument("--intra-node-gbps", type=float, default=d["intra_node_gbps"],
                   help="GB/s a GPU reaches in NCCL collectives within a node (nccl-tests bus bandwidth). Default: "
                        "from the card (NVLink or PCIe), 20 for GPUs given as sizes. Only changes the speed estimate.")
    p.add_argument("--inter-node-gbps", type=float, default=d["inter_node_gbps"],
                   help=f"GB/s between nodes (default {d['inter_node_gbps']:g}: one 200 Gb/s InfiniBand port). Only "
                        "changes the speed estimate of ddp/fsdp over several nodes.")
    p.add_argument("--dtype", default=d["dtype"], choices=["bf16", "fp16", "fp32"],
                   help="Weight dtype of the frozen base. bf16 unless the GPU lacks it (then fp16).")
    p.add_argument("--lora-rank", type=int, default=d["lora_rank"],
                   help="LoRA rank r. Memory of the adapters grows linearly with it (small next to weights).")
    p.add_argument("--lora-targets", default=d["lora_targets"],
                   help="Which linears get LoRA: a preset (language-all-linear, language-attention, "
                        "language-and-merger, language-and-vision), a regex, or comma-separated names (q_proj,v_proj).")
    from workbench.cli.config_flags import PART_FIELDS, add_config_flags

    add_config_flags(p, only=PART_FIELDS)  # the rates change no memory; they are accepted so train, launch and plan take the same flags
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"],
                   help="LoRA dropout; above 0 it saves a mask per LoRA input (a little activation memory).")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="Rows per step on each GPU (per_device_train_batch_size). Activations and logits grow linearly.")
    p.add_argument("--max-length", type=int, default=d["max_length"],
                   help="Longest row in tokens, text + visual. Activations and logits grow linearly with it.")
    p.add_argument("--max-pixels", type=int, default=d["max_pixels"],
                   help="Largest image area after resizing; every 28x28 pixels is one visual token "
                        "(1003520 = 1280 tokens).")
    p.add_argument("--min-pixels", type=int, default=d["min_pixels"], help="Smallest image area after resizing.")
    p.add_argument("--images-per-sample", type=int, default=d["images_per_sample"],
                   help="Images in one row (0 for text-only); sizes the vision tower's activations.")
    p.add_argument("--video-frames", type=int, default=d["video_frames"],
                   help="Frames sampled from the video in each row (0: no video). Every 2 frames are one temporal "
                        "patch: tokens = frames/2 x one frame's tokens, and the vision tower's activations grow "
                        "with frames x patches. The plan says the largest frame count that fits.")
    p.add_argument("--video-max-pixels", type=int, default=d["video_max_pixels"],
                   help="Largest area of one video frame after resizing (0: qwen-vl-utils' default of 768 tokens, "
                        "602112 pixels for Qwen2-VL and Qwen2.5-VL, 786432 for Qwen3-VL).")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="Plan without gradient checkpointing (every layer keeps all intermediates: much more memory).")
    p.add_argument("--quantization", default=d["quantization"], choices=["none", "nf4", "int8"],
                   help="Store the base's language-model linears in 4 bits (nf4: QLoRA, 0.52 bytes per weight) or "
                        "8 bits (int8), as model.quantization trains. Use nf4 when the bf16 base does not fit.")
    p.add_argument("--trained-tokens", type=int, default=d["trained_tokens"],
                   help="Answer (trained) tokens per row, e.g. p95 or max from `python -m workbench data check`: "
                        "only they reach lm_head and the loss. Default 0: not measured, every token of a row counts.")
    p.add_argument("--packing", action="store_true",
                   help="Plan data.packing: each batch item is one sequence of max-length tokens holding several "
                        "rows (their images and answers counted per sequence), not one padded row.")
    p.add_argument("--full-loss", action="store_true",
                   help="Plan the model's own loss over every position (training.loss_on_trained_tokens_only off): "
                        "logits of 12 bytes x tokens x vocab on the lm_head GPU.")
    p.add_argument("--json", action="store_true",
                   help="Print the plan as one JSON object on the last line (for scripts).")
    p.set_defaults(func=run)


def run(args) -> int:
    from workbench.hardware import cpu_device, detect_gpus, parse_gpu_spec, usable
    from workbench.planner import PlanRequest, format_plan, plan_memory
    from workbench.planner.request import parse_targets

    # without a GPU here: a plan for this machine's CPU (pass --gpus to plan for GPUs elsewhere)
    gpus = parse_gpu_spec(args.gpus) if args.gpus is not None else usable(detect_gpus()) or [cpu_device()]
    request = PlanRequest(
        model=args.model, gpus=gpus, dtype=args.dtype, lora_rank=args.lora_rank,
        lora_targets=parse_targets(args.lora_targets), lora_dropout=args.lora_dropout,
        recipe=args.recipe or "", vision=args.vision or "", merger=args.merger or "", language=args.language or "",
        batch_size=args.batch_size, max_length=args.max_length, max_pixels=args.max_pixels,
        min_pixels=args.min_pixels, images_per_sample=args.images_per_sample,
        video_frames=args.video_frames, video_max_pixels=args.video_max_pixels,
        gradient_checkpointing=not args.no_gradient_checkpointing, quantization=args.quantization,
        loss_on_trained_tokens_only=not args.full_loss, trained_tokens=args.trained_tokens,
        packing=args.packing, strategy=args.strategy, nodes=args.nodes,
        intra_node_gbps=args.intra_node_gbps, inter_node_gbps=args.inter_node_gbps)
    plan = plan_memory(request)
    if args.json:
        print(json.dumps(plan.to_json()))
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1
