"""What a run needs before the model loads: validated data, the processor, Trainer arguments."""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.settings import RunConfig


def dataset_paths(config: RunConfig) -> tuple[str, str]:
    """Train and eval files; the demo model without a dataset uses the demo's rows, and 'demo-video' names the
    video demo's rows wherever a dataset path goes (the CLI, the LoRA form, YAML)."""
    from workbench.demo import ensure_demo, is_demo
    from workbench.demo_video import demo_dataset_file, ensure_video_demo, is_demo_dataset

    train, evaluation = demo_dataset_file(config.data.train_path), demo_dataset_file(config.data.eval_path, "heldout")
    if is_demo_dataset(config.data.train_path) and not evaluation and config.data.eval_split <= 0 \
            and config.training.eval_steps > 0:
        evaluation = str(ensure_video_demo().heldout)  # the video demo evaluates on its own held-out rows too
    if not train:
        if not is_demo(config.model.name_or_path):
            raise UserError("data.train_path is empty: pass --dataset PATH (a .jsonl or .json file).")
        demo = ensure_demo(name=config.model.name_or_path)
        train = str(demo.train)
        if not evaluation and config.data.eval_split <= 0 and config.training.eval_steps > 0:
            evaluation = str(demo.heldout)  # the demo evaluates on its own held-out rows
    return train, evaluation


FIX_BY_SKIPPING = ("or train on the valid rows only: pass --skip-problem-rows (data.skip_problem_rows: true) or "
                   "tick 'Train on the valid rows only' on the Training tab")


@dataclass
class Skipped:
    """The rows of one dataset file a run leaves out (data.skip_problem_rows)."""

    path: str
    rows: int  # every record of the file, the skipped ones included
    problems: list  # workbench.data.problems.Problem, sorted by row

    def sentence(self) -> str:
        first = self.problems[0]
        return (f"skipping {len(self.problems)} of {self.rows} rows with problems in {Path(self.path).name} "
                f"(first: row {first.row}: {first.reason})")

    def records(self) -> list[dict]:
        return [{"file": self.path, "row": p.row, "kind": p.kind, "reason": p.reason} for p in self.problems]


def load_valid_samples(path: str, config: RunConfig, tokenizer) -> tuple[list, Skipped | None, dict]:
    """(the rows training uses, the rows it leaves out or None, tokens per row number), checked
    before any weights load, so a broken row fails now, not at step 5000.

    The same check as the Dataset tab and ``data check`` (image headers, visual tokens,
    exact lengths near max_length): seconds for 100k rows, where encoding every image
    through the processor up front would take as long as an epoch of preprocessing. Under a
    launch every rank runs it on the same file, so every rank leaves out the same rows
    (``TrainingJob`` checks that they agree)."""
    from workbench.data.stats import model_context
    from workbench.data.downloads import Downloads
    from workbench.data.images import ImageHeaders
    from workbench.data.validation import check_dataset
    from workbench.data.videos import defaults_from

    d, model = config.data, config.model.name_or_path
    report = check_dataset(path, d.format, d.max_length, d.min_pixels, d.max_pixels, tokenizer=tokenizer,
                           image_folder=d.image_folder or None, context=model_context(model), model=model,
                           video=defaults_from(d),
                           headers=ImageHeaders(downloads=Downloads(allow_private=d.allow_private_urls)))
    first = "; ".join(f"row {p.row}: {p.reason}" for p in report.problems[:3])
    if report.problems and not report.samples:
        raise UserError(f"Every row of {path} is a problem row ({len(report.problems)} of {report.rows}: {first}), so "
                        f"there is nothing to train on: fix them (see `python -m workbench data check {path}`).")
    if not report.samples:
        raise UserError(f"{path} has no usable rows.")
    lengths = {s.row: report.lengths[s.row].total for s in report.samples}
    if not report.problems:
        return report.samples, None, lengths
    if not d.skip_problem_rows:
        raise UserError(f"{path} has {len(report.problems)} problem row(s) ({first}). Fix them (see "
                        f"`python -m workbench data check {path}`) and start again, {FIX_BY_SKIPPING}.")
    return report.samples, Skipped(str(path), report.rows, report.problems), lengths


def build_datasets(config: RunConfig, model_path: str, skipped: list | None = None):
    """(train set, eval set or None, processor) for the model in the local folder ``model_path``.
    With data.packing the train set is a ``PackedDataset``: its items are sequences of whole rows.

    With data.skip_problem_rows, each file's left-out rows are appended to ``skipped`` (``Skipped``)."""
    from workbench.data.collate import SampleDataset, SampleEncoder
    from workbench.data.videos import defaults_from
    from workbench.training.loading import load_processor

    processor = load_processor(model_path)
    d = config.data
    encoder = SampleEncoder(processor, d.max_length, d.min_pixels, d.max_pixels, defaults_from(d))
    train_path, eval_path = dataset_paths(config)
    skipped = [] if skipped is None else skipped
    train, left_out, lengths = load_valid_samples(train_path, config, processor.tokenizer)
    skipped += [left_out] if left_out else []
    evaluation = None
    if eval_path:
        evaluation, left_out, _ = load_valid_samples(eval_path, config, processor.tokenizer)
        skipped += [left_out] if left_out else []
    if evaluation is None and d.eval_split > 0:
        shuffled = train[:]
        random.Random(config.training.seed).shuffle(shuffled)
        cut = max(1, int(len(shuffled) * d.eval_split))
        evaluation, train = shuffled[:cut], shuffled[cut:]
    eval_set = SampleDataset(evaluation, encoder) if evaluation else None
    train_set = SampleDataset(train, encoder, [lengths[s.row] for s in train])
    if d.packing:
        from workbench.data.packing import PackedDataset

        return PackedDataset(train_set, d.max_length), eval_set, processor
    return train_set, eval_set, processor


def collator_for(train_set, processor, model):
    """The batches' maker: padded rows, or packed sequences with the model's own mRoPE positions."""
    from workbench.data.collate import Collator
    from workbench.data.packing import PackedDataset, PackingCollator, rope_index_of

    pad = processor.tokenizer.pad_token_id
    return PackingCollator(pad, rope_index_of(model)) if isinstance(train_set, PackedDataset) else Collator(pad)


def rows_per_step(train_set, args) -> str:
    """What one optimizer step trains, in rows and tokens, as the Start message and progress say it."""
    from workbench.data.packing import PackedDataset

    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    if not isinstance(train_set, PackedDataset):
        return f"{per_step} rows per step (padded to the longest row of each batch)"
    rows, packs = len(train_set.samples), len(train_set)
    return (f"{rows:,} rows packed into {packs:,} sequences of up to {train_set.max_length:,} tokens; each step "
            f"trains {per_step} sequence(s): about {per_step * rows / packs:.1f} rows and "
            f"{per_step * train_set.tokens / packs:,.0f} tokens ({train_set.padding_share():.0%} of the room left empty)")


def row_fingerprint(*datasets) -> int:
    """A number that differs when the rows of ``datasets`` (SampleDataset or None) differ: ranks compare it."""
    rows = [[sample.row for sample in dataset.samples] if dataset is not None else None for dataset in datasets]
    return zlib.crc32(json.dumps(rows).encode()) & 0x7FFFFFFF


def build_trainer_args(config: RunConfig, has_eval: bool, **overrides):
    import torch
    from transformers import TrainingArguments

    from workbench.training.loading import pick_dtype

    t = config.training
    dtype = pick_dtype(config.model.dtype)
    evaluate = has_eval and t.eval_steps > 0
    arguments = dict(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio if t.warmup_ratio < 1 else int(t.warmup_ratio),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps or 500,
        # rotation happens in WorkbenchCallback.on_save, after the new checkpoint is marked
        # complete: Trainer rotates before on_save, which can leave no complete checkpoint
        save_total_limit=None,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
        eval_on_start=evaluate,  # the base's level first: the curve starts where training starts
        prediction_loss_only=True,  # the eval loop keeps no logits: the task metric generates its own answers
        # the best checkpoint by the task metric (by eval loss without answers), kept by the rotation
        metric_for_best_model=(("eval_score" if t.eval_samples > 0 else "eval_loss") if evaluate else None),
        greater_is_better=(t.eval_samples > 0) if evaluate else None,
        seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        # Trainer's own activation checkpointing stays off: apply_lora switches it on with
        # use_reentrant=False and input grads, which frozen embeddings under LoRA need
        # honest tokens/s: padding excluded (packed sequences have none, and no attention mask to count by)
        include_num_input_tokens_seen="all" if config.data.packing else "non_padding",
        remove_unused_columns=False,
        report_to=t.report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # installs a SIGTERM handler, which fails outside the main thread
        enable_jit_checkpoint=False,
    )
    return TrainingArguments(**{**arguments, **overrides})  # a placement's own arguments win
