"""Video and image+video batches on two CPU processes (gloo) through ``train --strategy``: a rank
whose batch holds a video and an image runs the vision tower twice, its peer once; every rank
must still run it the same number of times or FSDP2's all-gathers of the tower pair up wrong."""

import json
import math
import os
import signal
import time

import pytest
import torch

from data_helpers import png, video
from test_scale_out import assert_one_row_per_step_from_every_rank, cli, rank_processes, rows
from workbench.training.vision_sync import tower_calls_needed


@pytest.fixture(autouse=True)
def bounded_collectives(monkeypatch):
    # a hang fails the test in a minute instead of the default 30
    monkeypatch.setenv("WORKBENCH_COLLECTIVE_TIMEOUT_S", "60")


def _row(content, answer, images=(), videos=()):
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
            "images": list(images), "videos": list(videos)}


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Video-only, image-only, image+video and text-only rows: in most steps the two ranks' batches
    need a different number of tower calls (0, 1 or 2)."""
    root = tmp_path_factory.mktemp("mixed-video")
    video(root / "clip.mp4", frames=8, width=56, height=56, fps=8)
    png(root / "shape.png", 56, 56)
    data = [_row("<video>Which way?", "right", videos=["clip.mp4"]),
            _row("<image>What color?", "red", images=["shape.png"]),
            _row("<image><video>Same?", "yes", images=["shape.png"], videos=["clip.mp4"]),
            _row("Say hello.", "hello")]
    path = root / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


@pytest.mark.parametrize("mine, busiest, dummies", [
    (0, 0, 1),  # nobody has pixels: one dummy still gives the tower a gradient (DDP)
    (1, 1, 0),  # images here, a video there (or the reverse): one call each, nothing to add
    (1, 2, 1),  # a peer has images and videos: it calls the tower twice
    (0, 2, 2),
    (2, 2, 0),
])
def test_every_rank_runs_the_tower_as_often_as_the_busiest(mine, busiest, dummies):
    assert tower_calls_needed(mine, busiest) == dummies


def _model_and_batches(name, demo_config, media):
    from workbench.data.collate import Collator, SampleEncoder
    from workbench.data.sample import Sample, Turn
    from workbench.demo import ensure_demo
    from workbench.training.loading import load_model, load_processor
    from workbench.training.lora import apply_lora

    demo = ensure_demo(name=name)
    processor = load_processor(str(demo.model))
    encoder = SampleEncoder(processor, 512, 3136, 3136, {"min_pixels": 1000, "max_pixels": 3136})
    collate = Collator(processor.tokenizer.pad_token_id)
    samples = {"video": Sample([Turn("user", "<video>Which way?"), Turn("assistant", "right")],
                               videos=[str(media / "clip.mp4")], row=1),
               "image": Sample([Turn("user", "<image>What color?"), Turn("assistant", "red")],
                               images=[str(media / "shape.png")], row=2),
               "text": Sample([Turn("user", "Say hello."), Turn("assistant", "hello")], row=3)}
    batches = {k: collate([encoder.encode(s)]) for k, s in samples.items()}

    def model():
        torch.manual_seed(0)
        return apply_lora(load_model(str(demo.model), demo_config, device_map={"": "cpu"}), demo_config.lora, False)
    return model, batches


@pytest.mark.parametrize("name", ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"])
def test_a_rank_short_of_tower_calls_makes_them_up_with_zero_effect(name, mixed_data, demo_config, monkeypatch):
    """A video-only (or text-only) batch while a peer runs images and videos: the tower runs twice
    here too, and the loss and every gradient stay those of the plain model."""
    from workbench.training import vision_sync

    model, batches = _model_and_batches(name, demo_config, mixed_data.parent)
    assert "pixel_values_videos" in batches["video"] and "pixel_values" not in batches["video"]
    monkeypatch.setattr(vision_sync, "busiest_rank", lambda mine, device: 2)
    for kind, real_calls in (("video", 1), ("image", 1), ("text", 0)):
        plain, hooked = model(), model()
        assert vision_sync.keep_vision_tower_in_step(hooked) == 1
        calls = []
        hooked.base_model.model.model.visual.register_forward_hook(lambda *a: calls.append(1))
        results = []
        for m in (plain, hooked):
            loss = m(**batches[kind]).loss
            loss.backward()
            results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
        (plain_loss, plain_grads), (hooked_loss, hooked_grads) = results
        assert len(calls) == 2, (kind, calls)
        assert torch.equal(plain_loss, hooked_loss)
        tower = [n for n in plain_grads if ".visual." in n]
        assert tower and all(hooked_grads[n] is not None for n in tower), kind  # every tower weight: a gradient
        for n, grad in plain_grads.items():
            if grad is None:
                assert real_calls == 0 or ".visual." not in n or "deepstack" in n, n
                assert not hooked_grads[n].any(), n
            else:
                assert torch.equal(grad, hooked_grads[n]), n


@pytest.mark.slow  # 33-50 s each on 2 shared CPU cores, mostly the two processes starting
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_video_and_image_batches_on_two_ranks_do_not_hang(strategy, mixed_data, demo_config, tmp_path):
    """With the run's seed the 4 steps pair (rank 0 / rank 1) image+video / text, video / image,
    video / image, text / image+video: seen once by logging each rank's tower inputs."""
    config = demo_config.replace(
        data={"train_path": str(mixed_data), "max_pixels": 3136, "video_max_pixels": 3136, "video_min_frames": 2,
              "video_max_frames": 4},
        training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 4,
                  "save_steps": 4, "logging_steps": 1, "gradient_checkpointing": strategy == "fsdp"})
    out = tmp_path / strategy
    started = time.monotonic()
    proc = cli("train", config.save(tmp_path / "run.yaml"), "--strategy", strategy, "--nproc", 2,
               "--output-dir", out)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, _ in rank_processes(out):  # a hung rank outlives its launcher
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Finished 4 steps" in stdout
    assert_one_row_per_step_from_every_rank(out, 4)
    losses = [r["loss"] for r in rows(out) if r.get("kind") == "train"]
    assert losses and all(math.isfinite(x) for x in losses), losses
    print(f"{strategy}: {time.monotonic() - started:.1f} s")
