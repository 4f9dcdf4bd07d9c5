"""The planner's 4-bit (QLoRA) predictions next to published runs. Prints one JSON line.

    python benchmarks/planner_qlora.py            # the JSON line
    python benchmarks/planner_qlora.py --pretty   # and the table for docs/planner-accuracy.md

Each published run is planned with its model, quantisation, LoRA, dtype, batch, length and
images, with the model's own loss over every token (neither ms-swift nor unsloth computes
logits only at trained positions in these runs). Text-only Qwen2.5-7B is planned as
Qwen2-VL-7B without its vision tower (same language model shape). Short-row datasets are
planned at their likely longest row and at the run's max_length: a range. GPTQ-Int4 is
planned as NF4: both store 4 bits per weight plus constants (GPTQ's group-128 fp16 scales
and packed zeros: 0.520 bytes per weight; NF4 with double quantisation: 0.516).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
SWIFT = "github.com/modelscope/ms-swift"
UNSLOTH = "github.com/unslothai/notebooks"

PUBLISHED = [
    {"id": "swift-qwen2vl72b-gptq-int4-2gpu",
     "source": f"{SWIFT}, examples/train/qlora/gptq.sh (commit 177544b3d)",
     "config": "Qwen2-VL-72B-Instruct-GPTQ-Int4, LoRA r8 all-linear, freeze_vit, bf16, batch 1, max_length 2048, "
               "MAX_PIXELS 1003520, coco_2014_caption (640x480 images: 391 visual tokens), device_map over 2 GPUs",
     "measured": "comment '# 2 * 76GiB'", "measured_gib": [76.0, 76.0],
     "plan": {"model": "qwen2-vl-72b-instruct", "gpus": "2xA100-80GB", "quantization": "nf4", "max_pixels": 307200,
              "lengths": (512, 2048)},
     "note": "The same '# 2 * 76GiB' as ms-swift's bf16 device_map example of this model (docs/planner-accuracy.md, "
             "DDP and FSDP section), whose weights alone are 136.7 GiB; the 4-bit weights are 40.9 GiB. The "
             "comment looks carried over from the bf16 example rather than measured."},
    {"id": "swift-qwen25-7b-bnb-nf4-1gpu",
     "source": f"{SWIFT}, examples/train/qlora/bnb.sh (commit d307635b2)",
     "config": "Qwen2.5-7B-Instruct, bitsandbytes NF4 with double quantisation, bf16 compute, LoRA r8 all-linear, "
               "batch 1, max_length 2048, gradient checkpointing, alpaca-gpt4 zh/en + self-cognition (500 rows each)",
     "measured": "comment '# 10GB'", "measured_gib": [10e9 / GIB, 10.0],
     "plan": {"model": "qwen2-vl-7b-instruct", "gpus": "1x80GiB", "quantization": "nf4", "text_only": True,
              "lengths": (512, 2048)},
     "note": "'10GB' read both as GB (9.31 GiB) and as GiB."},
    {"id": "unsloth-qwen2vl7b-t4",
     "source": f"{UNSLOTH}, nb/Qwen2_VL_(7B)-Vision.ipynb (commit 03b0cdadd), its printed memory stats",
     "config": "Qwen2-VL-7B-Instruct loaded in 4 bits by unsloth, LoRA r16 on vision and language attention + MLP "
               "(50,855,936 trainable), fp16 (T4), batch 2, max_length 2048, adamw_8bit, unsloth gradient "
               "checkpointing, LaTeX_OCR (formula images of about 320x50 pixels: 24 visual tokens), Tesla T4",
     "measured": "max_memory_reserved 6.131 GB after loading, 7.508 GB peak (GiB: divided by 1024^3)",
     "measured_gib": [7.508, 7.508], "weights_measured_gib": 6.131, "without_context": True,
     "plan": {"model": "qwen2-vl-7b-instruct", "gpus": "1x14.748GiB", "quantization": "nf4", "dtype": "fp16", "rank": 16,
              "targets": "language-and-vision", "batch": 2, "max_pixels": 18816, "lengths": (128, 512)},
     "note": "The planner counts AdamW in fp32 (16 bytes per LoRA parameter; adamw_8bit needs 10: 0.28 GiB less "
             "here) and keeps the vision tower in fp16 (unsloth may quantise it); unsloth's checkpointing offloads "
             "activations to the CPU. max_memory_reserved holds no CUDA context: the prediction here leaves out "
             "the planner's 0.5 GiB for it."},
]


def text_only(layout):
    """The layout without its vision tower: a Qwen2(.5) language model of the same shape."""
    units = tuple(u for u in layout.units if not u.name.startswith("model.visual"))
    params = tuple((n, b) for n, b in layout.param_bytes if not n.startswith("model.visual"))
    return dataclasses.replace(layout, units=units, param_bytes=params)


def predict(run: dict, length: int) -> dict:
    """The planner's fullest GPU for a published run at rows of ``length`` tokens (GiB), and its weights."""
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory, terms
    from workbench.planner.request import layout_for, step_for
    from workbench.planner.strategies import whole_model

    p = run["plan"]
    request = PlanRequest(p["model"], parse_gpu_spec(p["gpus"]), dtype=p.get("dtype", "bf16"),
                          lora_rank=p.get("rank", 8), lora_targets=p.get("targets", "language-all-linear"),
                          batch_size=p.get("batch", 1), max_length=length, max_pixels=p.get("max_pixels", 1003520),
                          images_per_sample=0 if p.get("text_only") else 1, quantization=p["quantization"],
                          loss_on_trained_tokens_only=False, strategy="device_map")
    context = terms.CUDA_CONTEXT_BYTES if run.get("without_context") else 0
    if p.get("text_only"):
        layout = text_only(layout_for(request))
        row = whole_model(layout, step_for(request, layout))
        return {"total": (row["total_bytes"] - context) / GIB, "weights": row["weights_bytes"] / GIB}
    plan = plan_memory(request)
    worst = max(plan.devices, key=lambda d: d["total_bytes"])
    return {"total": (worst["total_bytes"] - context) / GIB,
            "weights": sum(d["weights_bytes"] for d in plan.devices) / GIB}


def published() -> list[dict]:
    rows = []
    for run in PUBLISHED:
        low, high = (predict(run, n) for n in run["plan"]["lengths"])
        measured = run["measured_gib"]
        row = {"id": run["id"], "source": run["source"], "config": run["config"], "measured": run["measured"],
               "measured_gib": [round(m, 2) for m in measured], "rows_planned": list(run["plan"]["lengths"]),
               "predicted_gib": [round(low["total"], 2), round(high["total"], 2)],
               "predicted_weights_gib": round(low["weights"], 2),
               "error_range": [round(low["total"] / max(measured) - 1, 3), round(high["total"] / min(measured) - 1, 3)],
               "note": run["note"]}
        if "weights_measured_gib" in run:
            row["weights_measured_gib"] = run["weights_measured_gib"]
            row["weights_error"] = round(low["weights"] / run["weights_measured_gib"] - 1, 3)
        rows.append(row)
    return rows


def pretty(rows: list[dict]) -> None:
    print("| run | measured per GPU | predicted (rows) | error |")
    print("|---|---|---|---|")
    for row in rows:
        lo, hi = row["predicted_gib"]
        e_lo, e_hi = row["error_range"]
        print(f"| {row['id']} | {row['measured']} | {lo:.2f}-{hi:.2f} GiB ({row['rows_planned'][0]}-"
              f"{row['rows_planned'][1]} tokens) | {100 * e_lo:+.0f}% to {100 * e_hi:+.0f}% |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretty", action="store_true", help="Also print the markdown table (before the JSON line).")
    args = parser.parse_args()
    rows = published()
    if args.pretty:
        pretty(rows)
    print(json.dumps({"published_4bit": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
