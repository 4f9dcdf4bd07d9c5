"""Video's cost (issue 21): frames read per second, and the planner's video terms against a
measured CPU training step of the demo model.

    python benchmarks/video.py [--frames 2 4 8] [--pixels 50176]

Three parts, printed as one JSON line:
- ``read``: ``video_read.measure`` (PyAV decoding and qwen-vl-utils' frame sampling) on a
  120-frame 640 x 480 clip;
- ``tower``: ``planner_parts.video_check``, the tiny random Qwen2-VL's vision side at 2/4/8
  frames of 224 x 224, saved activations against the planner's ``vision_saved_bytes``;
- ``demo``: the demo model (``workbench.demo``; LoRA on the language model and merger, its own
  setting, then on the vision blocks too) on
  one row with one real square mp4 sampled to N frames of at most ``--pixels``, encoded by the
  workbench's ``SampleEncoder``: the video tokens in input_ids against the planner's, the bytes
  autograd saves in the vision tower during the step against ``vision_saved_bytes``, and the
  seconds of one forward + backward (best of 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import planner_parts  # noqa: E402
import video_read  # noqa: E402


REACH = {"language-and-merger": {"vision": "frozen", "merger": "lora", "language": "lora"},  # the demo's own
         "language-and-vision": {"vision": "lora", "merger": "lora", "language": "lora"}}


def demo_step(frames: int, pixels: int, clip: Path, reach: str, repeat: int = 3) -> dict:
    from workbench.data.collate import Collator, SampleEncoder
    from workbench.data.sample import Sample, Turn
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.hardware import Gpu
    from workbench.planner import PlanRequest
    from workbench.planner.device_map import vision_saved_bytes
    from workbench.planner.request import layout_for, step_for
    from workbench.settings import RunConfig
    from workbench.training.loading import load_model, load_processor
    from workbench.training.lora import apply_lora

    demo = ensure_demo()
    config = RunConfig.from_dict(DEMO_TRAINING).replace(lora={"target_modules": reach})
    processor = load_processor(str(demo.model))
    encoder = SampleEncoder(processor, 4096, 3136, pixels, {"min_pixels": 3136, "max_pixels": pixels})
    sample = Sample([Turn("user", "<video>Which way does the bar move?"), Turn("assistant", "right")],
                    videos=[str(clip)], video_options=[{"nframes": frames}], row=1)
    batch = Collator(processor.tokenizer.pad_token_id)([encoder.encode(sample)])
    torch.manual_seed(0)
    model = apply_lora(load_model(str(demo.model), config, device_map={"": "cpu"}), config.lora, False)
    model.train()
    visual = model.get_base_model().model.visual
    tower = planner_parts.saved_bytes(visual, batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"])

    def step():
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: first-call allocations
    seconds = min(_timed(step) for _ in range(repeat))
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[next(model.parameters()).dtype]
    length = batch["input_ids"].shape[1]
    request = PlanRequest(str(demo.model), [Gpu(0, "bench", 1 << 40)], dtype=dtype, lora_rank=config.lora.rank,
                          lora_dropout=config.lora.dropout, **REACH[reach],
                          max_length=length, images_per_sample=0, video_frames=frames, video_max_pixels=pixels,
                          gradient_checkpointing=False)
    layout = layout_for(request)
    plan = step_for(request, layout, device_kind="cpu")
    planned = vision_saved_bytes(layout, plan)
    video_token = model.config.video_token_id
    return {"lora": reach, "frames": frames, "grid_thw": batch["video_grid_thw"][0].tolist(), "length": length,
            "video_tokens": int((batch["input_ids"] == video_token).sum()),
            "planned_video_tokens": plan.video_groups * plan.video_tokens_per_group,
            "tower_saved_bytes": tower, "planned_tower_bytes": planned,
            "error": round(planned / tower - 1, 3) if tower else None, "step_s": round(seconds, 3)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--pixels", type=int, default=224 * 224)
    args = parser.parse_args()
    torch.set_num_threads(1)  # comparable on a shared machine

    from data_helpers import video

    out = {"read": video_read.measure(frames=120, repeat=2)}
    with contextlib.redirect_stdout(sys.stderr):  # its own lines, readable; the JSON line stays alone
        out["tower"] = planner_parts.video_check(tuple(args.frames))
    with tempfile.TemporaryDirectory() as tmp:
        # square, so every frame is resized to the planned max_pixels (a wider frame gets fewer tokens)
        clip = video(Path(tmp) / "bar.mp4", frames=32, width=448, height=448, fps=8)
        out["demo"] = [demo_step(n, args.pixels, clip, reach) for reach in REACH for n in args.frames]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
