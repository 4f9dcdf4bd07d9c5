"""What a run needs before the model loads: validated data, the processor, Trainer arguments."""

from __future__ import annotations

import random

from workbench.errors import UserError
from workbench.settings import RunConfig


def dataset_paths(config: RunConfig) -> tuple[str, str]:
    """Train and eval files; the demo model without a dataset uses the demo's rows."""
    from workbench.demo import ensure_demo, is_demo

    train, evaluation = config.data.train_path, config.data.eval_path
    if not train:
        if not is_demo(config.model.name_or_path):
            raise UserError("data.train_path is empty: pass --dataset PATH (a .jsonl or .json file).")
        train = str(ensure_demo(name=config.model.name_or_path).train)
    return train, evaluation


def load_valid_samples(path: str, config: RunConfig, tokenizer):
    """All rows, checked before any weights load, so a broken row fails now, not at step 5000.

    The same check as the Dataset tab and ``data check`` (image headers, visual tokens,
    exact lengths near max_length): seconds for 100k rows, where encoding every image
    through the processor up front would take as long as an epoch of preprocessing."""
    from workbench.data.stats import model_context
    from workbench.data.downloads import Downloads
    from workbench.data.images import ImageHeaders
    from workbench.data.validation import check_dataset

    d, model = config.data, config.model.name_or_path
    report = check_dataset(path, d.format, d.max_length, d.min_pixels, d.max_pixels, tokenizer=tokenizer,
                           image_folder=d.image_folder or None, context=model_context(model), model=model,
                           headers=ImageHeaders(downloads=Downloads(allow_private=d.allow_private_urls)))
    if report.problems:
        first = "; ".join(f"row {p.row}: {p.reason}" for p in report.problems[:3])
        raise UserError(f"{path} has {len(report.problems)} problem row(s) ({first}). "
                        f"Fix them (see `python -m workbench data check {path}`) and start again.")
    if not report.samples:
        raise UserError(f"{path} has no usable rows.")
    return report.samples


def build_datasets(config: RunConfig, model_path: str):
    """(train set, eval set or None, processor) for the model in the local folder ``model_path``."""
    from workbench.data.collate import SampleDataset, SampleEncoder
    from workbench.training.loading import load_processor

    processor = load_processor(model_path)
    d = config.data
    encoder = SampleEncoder(processor, d.max_length, d.min_pixels, d.max_pixels)
    train_path, eval_path = dataset_paths(config)
    train = load_valid_samples(train_path, config, processor.tokenizer)
    evaluation = load_valid_samples(eval_path, config, processor.tokenizer) if eval_path else None
    if evaluation is None and d.eval_split > 0:
        shuffled = train[:]
        random.Random(config.training.seed).shuffle(shuffled)
        cut = max(1, int(len(shuffled) * d.eval_split))
        evaluation, train = shuffled[:cut], shuffled[cut:]
    eval_set = SampleDataset(evaluation, encoder) if evaluation else None
    return SampleDataset(train, encoder), eval_set, processor


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
        seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        # Trainer's own activation checkpointing stays off: apply_lora switches it on with
        # use_reentrant=False and input grads, which frozen embeddings under LoRA need
        include_num_input_tokens_seen="non_padding",  # honest tokens/s: padding excluded
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # installs a SIGTERM handler, which fails outside the main thread
        enable_jit_checkpoint=False,
    )
    return TrainingArguments(**{**arguments, **overrides})  # a placement's own arguments win
