"""Packing: samples per second and peak memory, packed (data.packing) against padded, same rows.

A mixed-length dataset of demo images and questions, lengths long-tailed as instruction data
is: most answers short, a tail of long multi-turn rows (the issue's "100-token rows mixed with
3,000-token rows", scaled to max_length 512). Lengths are drawn log-normal: median 0.12 x
max_length, sigma 0.9, capped at max_length; the shape of LLaVA-Instruct-style data, not
measured from a real file (none is on this machine). The model is the demo's architecture
widened (``scale_out.medium_model``, about 4.5M parameters), so arithmetic, not per-op
overhead, dominates a step.

Each side runs in its own fresh process through the workbench's own path (``build_datasets``,
``collator_for``, the workbench Trainer, the trained-token loss), one CPU thread, alternating
padded / packed for ``--rounds`` rounds; samples/s counts ROWS after the warm-up steps, and the
median over rounds is reported. The padded side draws batches of ``--batch`` rows; the packed side
``--packed-batch`` sequences of up to max_length tokens.

    python benchmarks/packing.py [--rows 400] [--rounds 2] [--batch 8] [--packed-batch 2] [--warmup 3]

max_loss_diff: the largest per-row loss difference, packed against unpacked, over the first 24
rows on the widened model (no training). Last line: one JSON object with ``speedup`` (packed /
padded rows per second, medians of the same interleaved run), ``padding_share_before`` (padding
tokens in the padded batches / all their tokens), ``padding_share_after`` (the same for packed
batches: none), ``empty_room_share`` (the packed sequences' unused room below max_length, never
computed on), ``max_loss_diff`` and the peak RSS of each side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MAX_LENGTH = 512
WORDS = ("red green blue yellow circle square triangle left right top bottom the shape is a small large "
         "picture shows one two three and on of with near").split()


def row_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of the rendered row, its image at the demo's largest size (9 visual tokens, one counted)."""
    chat = [{"role": m["role"], "content": [{"type": "image"}] * m["content"].count("<image>")
             + [{"type": "text", "text": m["content"].replace("<image>", "")}]} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 8


def write_dataset(folder: Path, rows: int, demo_data: Path, demo_model: Path) -> Path:
    """Rows whose answers follow the long-tailed length mix of the module docstring."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    rng = random.Random(0)
    images = sorted((demo_data / "images").glob("train_*.png"))
    path = folder / "mixed.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(rows):
            target = min(MAX_LENGTH - 40, int(rng.lognormvariate(math.log(0.12 * MAX_LENGTH), 0.9)))
            turns = 1 if target < 150 else rng.randint(1, 3)  # long rows are often multi-turn
            messages = []
            for turn in range(turns):
                budget = max(1, (target - 30 * turns) // turns)  # answer tokens of this turn
                answer = []
                while len(tokenizer(" ".join(answer), add_special_tokens=False)["input_ids"]) < budget:
                    answer += [rng.choice(WORDS) for _ in range(max(1, budget // 8))]
                question = ("<image>" if turn == 0 else "") + "What is in the picture?"
                messages += [{"role": "user", "content": question},
                             {"role": "assistant", "content": " ".join(answer)}]
            while row_tokens(tokenizer, messages) > MAX_LENGTH:  # the template's own tokens pushed it over
                messages[-1]["content"] = messages[-1]["content"].rsplit(" ", 10)[0]
            record = {"messages": messages, "images": [str(rng.choice(images))]}
            out.write(json.dumps(record) + "\n")
    return path


def config_for(args, model: str, data: Path, packing: bool, out: Path):
    from workbench.demo import DEMO_TRAINING
    from workbench.settings import RunConfig

    return RunConfig.from_dict(DEMO_TRAINING).replace(
        model={"name_or_path": model},
        data={"train_path": str(data), "max_length": MAX_LENGTH, "packing": packing},
        training={"num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size":
                  args.packed_batch if packing else args.batch, "gradient_accumulation_steps": 1,
                  "logging_steps": 1000, "save_steps": 0, "warmup_ratio": 0.0, "output_dir": str(out)})


def child(args) -> None:
    import torch
    from transformers import TrainerCallback

    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.training.inputs import build_datasets, build_trainer_args, collator_for
    from workbench.training.trainer import trainer_class

    torch.set_num_threads(1)
    packing = args.child == "packed"
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-")) / "run"
    config = config_for(args, args.model, Path(args.data), packing, out)
    train, _, processor = build_datasets(config, args.model)
    model = apply_lora(load_model(args.model, config, device_map={"": "cpu"}), config.lora, False)
    collate = collator_for(train, processor, model)
    batches: list[tuple[int, int, int]] = []  # (rows, tokens computed on, padding tokens) per batch

    def counting(items):
        batch = collate(items)
        rows = sum(len(i) for i in items) if packing else len(items)
        computed = batch["input_ids"].numel()
        padding = 0 if packing else int((batch["attention_mask"] == 0).sum())
        batches.append((rows, computed, padding))
        return batch

    ends: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            ends[state.global_step] = time.perf_counter()

    trainer = trainer_class()(model=model, args=build_trainer_args(config, False), train_dataset=train,
                              data_collator=counting, callbacks=[Timer()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()
    last = max(ends)
    rows = sum(b[0] for b in batches[args.warmup:last])
    result = {"side": args.child, "samples_per_s": rows / (ends[last] - ends[args.warmup]), "steps": last,
              "padding_share": sum(b[2] for b in batches) / sum(b[1] for b in batches),
              "tokens_per_step": statistics.mean(b[1] for b in batches),
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if packing:
        result["empty_room_share"] = train.padding_share()
        result["rows_per_step"] = statistics.mean(b[0] for b in batches)
    print(json.dumps(result), flush=True)


def max_loss_diff(model_path: str, data: Path, rows: int = 24) -> float:
    """Largest |per-row loss packed - unpacked| over ``rows`` rows packed as training packs them."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from workbench.data.collate import IGNORE_INDEX, Collator, SampleEncoder
    from workbench.data.formats import load_samples
    from workbench.data.packing import PackingCollator, pack_rows, rope_index_of

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(model_path)
    encoder = SampleEncoder(processor, MAX_LENGTH, 3136, 112 * 112)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    items = [encoder.encode(s) for s in load_samples(data).samples[:rows]]

    def losses(logits, labels):
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                 reduction="none")
        return loss, targets != IGNORE_INDEX

    worst = 0.0
    pad = processor.tokenizer.pad_token_id
    for pack in pack_rows([i["input_ids"].shape[0] for i in items], MAX_LENGTH):
        batch = PackingCollator(pad, rope_index_of(model))([[items[i] for i in pack]])
        with torch.no_grad():
            loss, keep = losses(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        start = 0
        for i in pack:
            alone = Collator(pad)([items[i]])
            with torch.no_grad():
                single, single_keep = losses(model(**{k: v for k, v in alone.items() if k != "labels"}).logits,
                                             alone["labels"])
            n = items[i]["input_ids"].shape[0]
            packed = float(loss[0, start:start + n][keep[0, start:start + n]].mean())
            worst = max(worst, abs(packed - float(single[single_keep].mean())))
            start += n
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400, help="Rows in the mixed-length dataset (one epoch per run).")
    parser.add_argument("--batch", type=int, default=8, help="Padded side: rows per step.")
    parser.add_argument("--packed-batch", type=int, default=2, help="Packed side: sequences of max_length per step.")
    parser.add_argument("--warmup", type=int, default=3, help="Steps not timed.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating padded/packed runs; medians count.")
    parser.add_argument("--child", choices=["padded", "packed"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from scale_out import medium_model

    from workbench.demo import ensure_demo

    demo = ensure_demo()
    folder = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    model = str(medium_model(demo.model, folder))
    data = write_dataset(folder, args.rows, demo.data, demo.model)
    results: dict[str, list[dict]] = {"padded": [], "packed": []}
    for _ in range(args.rounds):  # interleaved: a busy minute of the shared machine hits both sides
        for side in ("padded", "packed"):
            cmd = [sys.executable, __file__, "--child", side, "--model", model, "--data", str(data),
                   "--batch", str(args.batch), "--packed-batch", str(args.packed_batch), "--warmup", str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            results[side].append(row)
    rate = {side: statistics.median(r["samples_per_s"] for r in rows) for side, rows in results.items()}
    packed = results["packed"][-1]
    summary = {"speedup": round(rate["packed"] / rate["padded"], 3),
               "padded_samples_per_s": round(rate["padded"], 2), "packed_samples_per_s": round(rate["packed"], 2),
               "padding_share_before": round(results["padded"][-1]["padding_share"], 4),
               "padding_share_after": round(packed["padding_share"], 4),
               "empty_room_share": round(packed["empty_room_share"], 4),
               "rows_per_packed_step": round(packed["rows_per_step"], 2),
               "padded_peak_rss_bytes": max(r["peak_rss_bytes"] for r in results["padded"]),
               "packed_peak_rss_bytes": max(r["peak_rss_bytes"] for r in results["packed"]),
               "max_loss_diff": max_loss_diff(model, data),
               "rows": args.rows, "max_length": MAX_LENGTH, "rounds": args.rounds,
               "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
