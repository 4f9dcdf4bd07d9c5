"""data.packing: rows packed into one padding-free sequence train exactly as they do unpacked."""

import pytest
import torch

from workbench.data.collate import IGNORE_INDEX, Collator, SampleDataset, SampleEncoder
from workbench.data.packing import PackedDataset, PackingCollator, pack_rows, rope_index_of
from workbench.data.sample import Sample, Turn


def brute_first_fit_decreasing(lengths, max_length):
    """The textbook O(n^2) first-fit-decreasing, to check the tree's answer against."""
    room, members = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for k, free in enumerate(room):
            if free >= lengths[i]:
                room[k] -= lengths[i]
                members[k].append(i)
                break
        else:
            room.append(max_length - lengths[i])
            members.append([i])
    return [sorted(m) for m in members]


def test_pack_rows_is_first_fit_decreasing_and_never_splits_a_row():
    import random

    rng = random.Random(3)
    for _ in range(50):
        lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 60))]
        packs = pack_rows(lengths, 100)
        assert packs == brute_first_fit_decreasing(lengths, 100)
        assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in p) <= 100 for p in packs)
    assert pack_rows([60, 50, 40, 30, 20], 100) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError, match="max_length 100"):
        pack_rows([101], 100)


FAMILIES = ["demo", "demo-qwen2.5-vl", "demo-qwen3-vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from workbench.data.formats import load_samples
    from workbench.demo import ensure_demo

    paths = ensure_demo(name=request.param)
    processor = AutoProcessor.from_pretrained(paths.model)
    encoder = SampleEncoder(processor, 2048, 3136, 112 * 112)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(paths.model, dtype=torch.float32)
    model.eval()
    samples = load_samples(paths.train).samples
    text_only = Sample([Turn("user", "Say a color."), Turn("assistant", "blue and red")], row=999)
    two_turns = Sample([Turn("user", "<image>What color?"), Turn("assistant", "red", loss=False),
                        Turn("user", "And the shape?"), Turn("assistant", "circle")],
                       images=samples[1].images, row=998)
    rows = [encoder.encode(s) for s in (samples[0], text_only, two_turns, samples[2])]
    return request.param, model, processor, rows


def per_token_loss(logits, labels):
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX,
                                             reduction="none"), targets != IGNORE_INDEX


def row_losses_unpacked(model, processor, rows):
    out = []
    for row in rows:
        batch = Collator(processor.tokenizer.pad_token_id)([row])
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss, keep = per_token_loss(logits, batch["labels"])
        out.append(float(loss[keep].mean()))
    return out


def packed_logits(model, processor, rows):
    batch = PackingCollator(processor.tokenizer.pad_token_id, rope_index_of(model))([rows])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return logits, batch


def test_per_row_loss_packed_equals_unpacked(family):
    """Every family: rows with images first, in the middle and last, a text-only row and a row
    whose first answer is 'loss: false', packed into one sequence: each row's loss within 1e-4."""
    _, model, processor, rows = family
    expected = row_losses_unpacked(model, processor, rows)
    logits, batch = packed_logits(model, processor, rows)
    assert batch["input_ids"].shape == (1, sum(r["input_ids"].shape[0] for r in rows))  # no padding at all
    assert "attention_mask" not in batch
    loss, keep = per_token_loss(logits, batch["labels"])
    start = 0
    for row, want in zip(rows, expected):
        n = row["input_ids"].shape[0]
        got = float(loss[0, start:start + n][keep[0, start:start + n]].mean())
        assert abs(got - want) < 1e-4, (got, want)
        # the trained tokens are the row's own (the loss flags are unchanged), none added at the seams
        assert int(keep[0, start:start + n].sum()) == int((row["labels"][1:] != IGNORE_INDEX).sum())
        start += n


def test_images_keep_their_grid_positions(family):
    """A row's 3-D positions packed are its positions unpacked (what the model computes itself)."""
    _, model, processor, rows = family
    _, batch = packed_logits(model, processor, rows)
    start = 0
    for row in rows:
        n = row["input_ids"].shape[0]
        alone = Collator(processor.tokenizer.pad_token_id)([row])
        inner = next(m for m in model.modules() if hasattr(m, "get_rope_index"))
        if "image_grid_thw" in row:
            want, _ = inner.get_rope_index(alone["input_ids"], mm_token_type_ids=alone["mm_token_type_ids"],
                                           image_grid_thw=alone["image_grid_thw"])
            assert torch.equal(batch["position_ids"][1:, 0, start:start + n], want[:, 0])
            assert want[1, 0].max() < n - 1  # an image row's spatial positions differ from the text positions
        assert torch.equal(batch["position_ids"][0, 0, start:start + n], torch.arange(n))
        start += n


def test_a_row_does_not_see_its_neighbour(family):
    """The last row's logits are the same whatever row precedes it in the sequence."""
    _, model, processor, rows = family
    first, _ = packed_logits(model, processor, [rows[0], rows[3]])
    second, _ = packed_logits(model, processor, [rows[2], rows[3]])
    n = rows[3]["input_ids"].shape[0]
    assert torch.allclose(first[0, -n:], second[0, -n:], atol=1e-5)
    # and not trivially: the same row after a neighbour without the packed positions would differ
    batch = PackingCollator(processor.tokenizer.pad_token_id, rope_index_of(model))([[rows[0], rows[3]]])
    batch["position_ids"] = batch["position_ids"][1:]  # 3-D only: the model sees one long row
    with torch.no_grad():
        crossed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert not torch.allclose(first[0, -n:], crossed[0, -n:], atol=1e-3)


def test_packed_dataset_items_and_eval_batches(demo):
    from transformers import AutoProcessor

    from workbench.data.formats import load_samples

    processor = AutoProcessor.from_pretrained(demo.model)
    encoder = SampleEncoder(processor, 512, 3136, 112 * 112)
    samples = load_samples(demo.train).samples[:6]
    lengths = [encoder.encode(s)["input_ids"].shape[0] for s in samples]
    packed = PackedDataset(SampleDataset(samples, encoder, lengths), 2 * max(lengths))
    assert len(packed) == len(brute_first_fit_decreasing(lengths, 2 * max(lengths)))
    assert [len(packed[i]) for i in range(len(packed))] == [len(p) for p in packed.packs]
    assert packed.padding_share() == pytest.approx(1 - sum(lengths) / (len(packed) * 2 * max(lengths)))
    # the Start message: rows and tokens per step, counted here from the lengths themselves
    from types import SimpleNamespace

    from workbench.training.inputs import rows_per_step

    sequences = len(brute_first_fit_decreasing(lengths, 2 * max(lengths)))
    said = rows_per_step(packed, SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1,
                                                 world_size=1))
    assert f"6 rows packed into {sequences} sequences of up to {2 * max(lengths)} tokens" in said
    assert f"about {2 * 6 / sequences:.1f} rows and {2 * sum(lengths) / sequences:,.0f} tokens" in said
    # evaluation batches hold rows, not sequences: padded as before
    batch = PackingCollator(processor.tokenizer.pad_token_id, None)([encoder.encode(samples[0])])
    assert "attention_mask" in batch and batch["input_ids"].shape[0] == 1


@pytest.mark.slow
def test_a_packed_run_stopped_mid_epoch_resumes_into_the_same_sequences(demo_config, tmp_path):
    """A packed run stopped at step 2 and resumed trains steps 3 and 4 on the same sequences, in the
    same order, as a run that never stopped: the same losses."""
    from workbench.training import JobState, TrainingJob

    config = demo_config.replace(data={"packing": True}, training={
        "max_steps": 4, "save_steps": 0, "logging_steps": 1, "per_device_train_batch_size": 2})

    def losses(job):
        return {row["step"]: row["loss"] for row in job.metrics.since() if row["kind"] == "train"}

    straight = TrainingJob(config.replace(training={"output_dir": str(tmp_path / "straight")}))
    assert straight.run() == JobState.FINISHED, straight.message
    assert "rows packed into" in "\n".join(straight.log_tail)
    stopped = TrainingJob(config.replace(training={"output_dir": str(tmp_path / "stopped")}))

    def stop_at_two():  # the Stop button, pressed during step 2
        if stopped.step >= 2:
            stopped._stop.set()
        return stopped.stop_requested

    stopped.should_stop = stop_at_two
    assert stopped.run() == JobState.STOPPED, stopped.message
    resumed = TrainingJob(config.replace(training={"output_dir": str(tmp_path / "stopped")}), resume=True)
    assert resumed.run() == JobState.FINISHED, resumed.message
    want, got = losses(straight), losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]  # the first two rows kept from before the stop
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], abs=1e-5)
    # rows per second count rows, not sequences: several rows ride in each sequence
    row = [r for r in straight.metrics.since() if r["kind"] == "train"][-1]
    assert row["samples_per_s"] is not None


def test_the_packing_lengths_are_the_encoded_lengths(demo, demo_config):
    """Sequences are filled by the data check's token counts: they must be the rows' real lengths,
    or a sequence could exceed max_length."""
    from workbench.training.inputs import build_datasets

    train, _, _ = build_datasets(demo_config.replace(data={"packing": True}), str(demo.model))
    assert isinstance(train, PackedDataset) and len(train) < len(train.samples)
    assert [train.rows[i]["input_ids"].shape[0] for i in range(40)] == train.rows.lengths[:40]


def test_video_rows_pack_with_their_frames(family, tmp_path):
    """A video row between an image row and a text row: the packed batch carries its frames (it lost them
    before video landed in packing) and every row's loss equals its unpacked loss."""
    from data_helpers import video

    from workbench.data.videos import defaults_from

    name, model, processor, rows = family
    clip = str(video(tmp_path / "bar.mp4", frames=16, fps=8))
    encoder = SampleEncoder(processor, 2048, 3136, 112 * 112,
                            defaults_from({"video_fps": 4.0, "video_max_frames": 4, "video_max_pixels": 64 * 64,
                                           "video_min_pixels": 3136}))
    moving = encoder.encode(Sample([Turn("user", "<video>Which way does the bar move?"), Turn("assistant", "right")],
                                   videos=[clip], row=997))
    assert "pixel_values_videos" in moving
    packed_rows = [rows[0], moving, rows[1]]
    expected = row_losses_unpacked(model, processor, packed_rows)
    logits, batch = packed_logits(model, processor, packed_rows)
    assert torch.equal(batch["video_grid_thw"], moving["video_grid_thw"])
    assert torch.equal(batch["pixel_values_videos"], moving["pixel_values_videos"])
    loss, keep = per_token_loss(logits, batch["labels"])
    start = 0
    for row, want in zip(packed_rows, expected):
        n = row["input_ids"].shape[0]
        got = float(loss[0, start:start + n][keep[0, start:start + n]].mean())
        assert abs(got - want) < 1e-4, (name, got, want)
        start += n


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--strategy", "ddp", "--nproc", "2"], ["--strategy", "fsdp", "--nproc", "2"],
                                   ["--quantization", "nf4"]], ids=["ddp", "fsdp", "nf4"])
def test_packing_trains_under_ddp_fsdp_and_a_4bit_base(flags, tmp_path):
    import math

    from conftest import run_cli
    from workbench.run_folder import RunFolder

    out = tmp_path / "run"
    result = run_cli("train", "--packing", "--max-steps", "3", "--save-steps", "3", "--eval-steps", "0", "--logging-steps", "1",
                     "--output-dir", out, *flags, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "packed into" in result.stderr  # the Start message counts sequences, rows and tokens per step
    losses = [r["loss"] for r in RunFolder(out).metrics() if r.get("kind") == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
