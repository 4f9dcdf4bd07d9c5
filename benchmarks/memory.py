"""Peak memory of one training step: the workbench vs plain Trainer + peft on the same rows.

    python benchmarks/memory.py [--tokens 1024] [--trained 16] [--vocab 151936]

Both sides run one optimizer step of transformers' Trainer with the same TrainingArguments
(the workbench's) and the same LoRA settings. The
workbench side is its own Trainer subclass on apply_lora's model (loss on trained tokens
only); the plain side is ``Trainer`` on ``get_peft_model`` with checkpointing switched on by
hand, as a user would write it. Peak = the largest sum of live tensor storage created
during the step (forward, backward, optimizer; the weights are excluded), tracked on the
CPU with the planner benchmark's ``LiveStorage`` (benchmarks/planner_accuracy.py).

Two cases:
- long rows with short answers: a tiny bf16 Qwen2-VL (4 layers, hidden 256) with
  Qwen2-VL's real vocabulary, one row of --tokens tokens (one 64-token image) whose last
  --trained tokens are the answer;
- the demo rows: the embedded demo model, one batch of 8 of its training rows, the demo's
  own settings (``DEMO_TRAINING``: LoRA r16 with the merger, no checkpointing; fp32 on CPU).

Each case also times one forward + backward of both sides, interleaved (--repeats of each,
median): the cost of the trained-token loss in time, robust to a busy machine where two
separate training processes are not (benchmarks/train_throughput.py).

Prints one table line per case, then one JSON line with both and the long-row ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.planner_accuracy import LiveStorage, image_inputs, tiny_config  # noqa: E402

MIB = 1024**2


def step_peak(trainer) -> int:
    """Peak live bytes created by one Trainer step (max_steps 1), the weights excluded."""
    existing = list(trainer.model.parameters()) + list(trainer.model.buffers())
    with LiveStorage(existing) as tracker:
        trainer.train()
    return tracker.peak


def run_config(output_dir: str, batch: int, raw: dict | None = None):
    """The long-row case's settings (LoRA r8 on the language linears, checkpointing), or ``raw``'s."""
    from workbench.settings import RunConfig

    raw = raw or {"lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": "language-all-linear"},
                  "training": {"gradient_checkpointing": True}}
    return RunConfig.from_dict(raw).replace(training={
        "max_steps": 1, "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "save_steps": 0,
        "warmup_ratio": 0.0, "logging_steps": 1, "output_dir": output_dir})


def trainers(make_model, rows, collator, config):
    """(workbench trainer, plain trainer) over the same rows, each on its own fresh model."""
    from peft import get_peft_model
    from transformers import Trainer

    from workbench.training.job import trainer_class
    from workbench.training.lora import apply_lora, lora_config
    from workbench.training.inputs import build_trainer_args

    args = build_trainer_args(config, has_eval=False)
    checkpointing = config.training.gradient_checkpointing
    torch.manual_seed(0)
    ours = apply_lora(make_model(), config.lora, checkpointing)
    workbench = trainer_class()(model=ours, args=args, train_dataset=rows, data_collator=collator,
                                loss_on_trained_tokens_only=True)
    torch.manual_seed(0)
    plain_model = get_peft_model(make_model(), lora_config(config.lora))  # the same LoraConfig
    if checkpointing:
        plain_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        plain_model.enable_input_require_grads()
    plain = Trainer(model=plain_model, args=args, train_dataset=rows, data_collator=collator)
    return workbench, plain


def step_seconds(trainers_: tuple, repeats: int) -> list[float]:
    """Median seconds of one forward + backward (Trainer.training_step) of each trainer on its
    first batch, the trainers interleaved so a busy machine slows both alike."""
    import statistics
    import time

    prepared = []
    for trainer in trainers_:
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        prepared.append((trainer, batch, trainer._get_num_items_in_batch([batch], trainer.args.device)))
    times: list[list[float]] = [[] for _ in trainers_]
    for _ in range(repeats):
        for i, (trainer, batch, items) in enumerate(prepared):
            trainer.model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            trainer.training_step(trainer.model_wrapped, batch, items)
            times[i].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def compare(name: str, make_model, rows, collator, config, repeats: int = 0, **facts) -> dict:
    from transformers.trainer_callback import PrinterCallback

    workbench, plain = trainers(make_model, rows, collator, config)
    for trainer in (workbench, plain):
        trainer.remove_callback(PrinterCallback)
    ours, theirs = step_peak(workbench), step_peak(plain)
    result = {"case": name, **facts, "workbench_peak_bytes": ours, "plain_peak_bytes": theirs,
              "ratio": round(ours / theirs, 4)}
    speed = ""
    if repeats:
        ours_s, theirs_s = step_seconds((workbench, plain), repeats)
        result.update(workbench_step_ms=round(1000 * ours_s, 2), plain_step_ms=round(1000 * theirs_s, 2),
                      step_time_ratio=round(ours_s / theirs_s, 4))
        speed = f"   step {1000 * ours_s:.1f} vs {1000 * theirs_s:.1f} ms"
    print(f"{name:28s} workbench {ours / MIB:9.1f} MiB   plain Trainer+peft {theirs / MIB:9.1f} MiB   "
          f"ratio {ours / theirs:.3f}{speed}", flush=True)
    return result


def long_rows(tokens: int, trained: int, vocab: int, repeats: int) -> dict:
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.data.collate import IGNORE_INDEX, Collator

    model_config = tiny_config(vocab)
    text = model_config.text_config
    text.bos_token_id = text.eos_token_id = text.pad_token_id = 0

    def make_model():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return Qwen2VLForConditionalGeneration(model_config)
        finally:
            torch.set_default_dtype(previous)

    torch.manual_seed(0)
    row = image_inputs(tokens, vocab, grid=(1, 16, 16))
    row["labels"][0, :tokens - trained] = IGNORE_INDEX
    item = {k: (v[0] if k in ("input_ids", "attention_mask", "labels", "mm_token_type_ids") else v) for k, v in row.items()}
    item["pixel_values"] = item["pixel_values"].to(torch.bfloat16)
    config = run_config(tempfile.mkdtemp(prefix="memory-bench-"), 1)
    return compare(f"{tokens} tokens, {trained} trained", make_model, [item], Collator(0), config, repeats,
                   tokens=tokens, trained_tokens=trained, vocab=vocab)


def demo_rows(repeats: int, count: int = 8) -> dict:
    from workbench.data.collate import Collator, SampleEncoder
    from workbench.data.formats import load_samples
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.training.loading import load_model, load_processor

    demo = ensure_demo()
    config = run_config(tempfile.mkdtemp(prefix="memory-bench-"), count, DEMO_TRAINING)
    processor = load_processor(str(demo.model))
    d = config.data
    encoder = SampleEncoder(processor, d.max_length, d.min_pixels, d.max_pixels)
    rows = [encoder.encode(s) for s in load_samples(demo.train).samples[:count]]
    tokens = sum(int(r["input_ids"].shape[0]) for r in rows)
    trained = sum(int((r["labels"][1:] != -100).sum()) for r in rows)
    return compare(f"demo: {count} rows", lambda: load_model(str(demo.model), config), rows,
                   Collator(processor.tokenizer.pad_token_id), config, repeats, tokens=tokens, trained_tokens=trained,
                   vocab=len(processor.tokenizer))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="Tokens of the long row (image included).")
    parser.add_argument("--trained", type=int, default=16, help="Trained (answer) tokens at its end.")
    parser.add_argument("--vocab", type=int, default=151936, help="Vocabulary of the tiny model (Qwen2-VL's).")
    parser.add_argument("--repeats", type=int, default=30,
                        help="Interleaved timed steps per side (median reported); 0: memory only.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same for both sides; tiny models gain nothing from more
    long = long_rows(args.tokens, args.trained, args.vocab, args.repeats)
    demo = demo_rows(args.repeats)
    print(json.dumps({"ratio": long["ratio"], "long_rows": long, "demo_rows": demo}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
