"""What a run's settings may hold: allowed values, the limits past which a number cannot be meant,
and ``validate``, the field-level checks of a ``RunConfig`` that need no model (each error names
the field and the fix). ``workbench.settings`` holds the shape; this module its rules.
"""

from __future__ import annotations

from workbench.errors import UserError
from workbench.models.families import QWEN2_VL

DEMO_MODEL = "demo"
# Dataset layouts a run may name (workbench.data.formats reads each; auto looks at the rows).
DATA_FORMATS = ("auto", "swift", "sharegpt", "messages", "query-response", "alpaca", "cauldron")

# Target-module presets for LoRA: the same names in every family; each family's table
# (workbench.models.families) turns a name into a regex over its own module names. These are
# Qwen2-VL's regexes, kept for callers without a model at hand.
LANGUAGE_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_PRESETS: dict[str, str | list[str]] = QWEN2_VL.target_presets()


def target_modules_for(targets, family=None):
    """A preset name -> ``family``'s regex (Qwen2-VL's when None); a list or regex passes through."""
    if isinstance(targets, str) and targets in TARGET_PRESETS:
        return (family or QWEN2_VL).target_presets()[targets]
    if isinstance(targets, (list, tuple)):
        return list(targets)
    return targets

# What trains in each part of the model (workbench.training.parts turns it into LoRA targets,
# modules_to_save and optimizer groups). A recipe fills the parts a config leaves empty.
PARTS = ("vision", "merger", "language")
PART_MODES = ("frozen", "lora", "full")
RECIPES: dict[str, dict[str, str]] = {
    "language-lora": {"vision": "frozen", "merger": "frozen", "language": "lora"},
    "merger-full": {"vision": "frozen", "merger": "full", "language": "lora"},
    "vision-lora": {"vision": "lora", "merger": "lora", "language": "lora"},
    "merger-only": {"vision": "frozen", "merger": "full", "language": "frozen"},
}
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("none", "nf4", "int8")
# A run.yaml is a few KiB; a path or hub id is at most PATH_MAX. Anything larger is not a config.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_PATH_CHARS = 4096
STRATEGIES = ("device_map", "ddp", "fsdp")
# The largest cluster the workbench plans for; a launch beyond it writes a script per node for nothing.
MAX_NODES = 256
MAX_PROCESSES = 1024
# A billion optimizer steps is years of training: a larger count is a typo (and past int64 a crash).
MAX_STEP_COUNT = 10**9
SEED_LIMIT = 2**32  # numpy's seed range, which transformers' set_seed seeds too
EVAL_METRICS = ("auto", "exact", "rouge-l", "bleu", "iou", "cer")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
MAX_EVAL_SAMPLES = 10_000  # each is a generation at every evaluation: more is a benchmark, not a check
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")



def validate(config) -> None:
    """Field-level checks that need no model: each error names the field and the fix."""
    m, d, l, t = config.model, config.data, config.lora, config.training
    for name, value in (("model.name_or_path", m.name_or_path), ("data.train_path", d.train_path),
                        ("data.eval_path", d.eval_path), ("data.image_folder", d.image_folder),
                        ("training.output_dir", t.output_dir)):
        if len(str(value)) > MAX_PATH_CHARS:
            raise UserError(f"{name} is {len(str(value))} characters long, more than any path or hub id "
                            f"({MAX_PATH_CHARS}): check the config.")
    if not str(m.name_or_path).strip():
        raise UserError("model.name_or_path is empty: give 'demo', a preset, a local model folder or a hub id.")
    if m.dtype not in DTYPES:
        raise UserError(f"model.dtype '{m.dtype}' is not one of {', '.join(DTYPES)}.")
    if m.quantization not in QUANTIZATIONS:
        raise UserError(f"model.quantization '{m.quantization}' is not one of {', '.join(QUANTIZATIONS)}: "
                        "use none for a bf16 base, nf4 for QLoRA.")
    if m.device_map is not None and not isinstance(m.device_map, (dict, str)):
        raise UserError("model.device_map must be a mapping of module -> device, 'auto', 'cpu' or empty.")
    if d.format not in DATA_FORMATS:
        raise UserError(f"data.format '{d.format}' is unknown: use one of {', '.join(DATA_FORMATS)}.")
    _positive("data.max_length", d.max_length)
    if d.trained_tokens < 0:
        raise UserError(f"data.trained_tokens {d.trained_tokens} is negative: use 0 (not measured) or the "
                        "answer tokens per row from the Dataset tab.")
    _positive("data.min_pixels", d.min_pixels)
    _positive("data.max_pixels", d.max_pixels)
    if d.min_pixels > d.max_pixels:
        raise UserError(f"data.min_pixels ({d.min_pixels}) is larger than data.max_pixels ({d.max_pixels}): lower min_pixels or raise max_pixels.")
    video_rules(d)
    if not 0 <= d.eval_split <= 0.5:
        raise UserError(f"data.eval_split {d.eval_split} is outside 0..0.5: use e.g. 0.05, or 0 for none.")
    _positive("lora.rank", l.rank)
    _positive("lora.alpha", l.alpha)
    if not 0 <= l.dropout < 1:
        raise UserError(f"lora.dropout {l.dropout} is outside [0, 1): use e.g. 0.05.")
    if isinstance(l.target_modules, str):
        if l.target_modules not in TARGET_PRESETS:
            raise UserError(f"lora.target_modules '{l.target_modules}' is not a preset ({', '.join(TARGET_PRESETS)}): pick one or give a list of module names.")
    elif not (isinstance(l.target_modules, list) and l.target_modules and all(isinstance(x, str) and x for x in l.target_modules)):
        raise UserError("lora.target_modules must be a preset name or a non-empty list of module names such as [q_proj, v_proj].")
    if not (isinstance(l.modules_to_save, list) and all(isinstance(x, str) and x for x in l.modules_to_save)):
        raise UserError("lora.modules_to_save must be a list of module names such as [lm_head] (or empty).")
    check_parts(l, t.learning_rate)
    if m.quantization != "none" and l.parts()["language"] == "full":
        raise UserError(f"lora.language is full but model.quantization is {m.quantization}: quantised weights "
                        "cannot be trained in full; use lora for the language model, or quantization none.")
    if not 0 < t.learning_rate <= 1:  # also refuses nan
        raise UserError(f"training.learning_rate {t.learning_rate} is outside (0, 1]: LoRA usually uses 1e-4 to 2e-4.")
    if not 0 <= t.weight_decay <= 1:
        raise UserError(f"training.weight_decay {t.weight_decay} is outside 0..1: use 0, or e.g. 0.01.")
    if t.lr_scheduler_type not in SCHEDULERS:
        raise UserError(f"training.lr_scheduler_type '{t.lr_scheduler_type}' is unknown: use one of {', '.join(SCHEDULERS)}.")
    if not 0 <= t.warmup_ratio <= 1:
        raise UserError(f"training.warmup_ratio {t.warmup_ratio} is outside 0..1.")
    if t.max_steps == 0 or t.max_steps < -1:
        raise UserError(f"training.max_steps {t.max_steps} is invalid: use a positive number, or -1 to train by epochs.")
    if t.max_steps == -1 and not 0 < t.num_train_epochs < float("inf"):
        raise UserError(f"training.num_train_epochs {t.num_train_epochs} must be a positive finite number when max_steps is -1.")
    _positive("training.per_device_train_batch_size", t.per_device_train_batch_size)
    _positive("training.gradient_accumulation_steps", t.gradient_accumulation_steps)
    _positive("training.logging_steps", t.logging_steps)
    if t.strategy not in STRATEGIES:
        raise UserError(f"training.strategy '{t.strategy}' is unknown: use {', '.join(STRATEGIES)}.")
    _positive("training.nodes", t.nodes)
    if t.nproc_per_node < 0:
        raise UserError(f"training.nproc_per_node {t.nproc_per_node} is negative: use 0 (every GPU) or a count.")
    for name in ("eval_steps", "save_steps", "save_total_limit"):
        if getattr(t, name) < 0:
            raise UserError(f"training.{name} {getattr(t, name)} is negative: use 0 or a positive number.")
    if t.eval_metric not in EVAL_METRICS:
        raise UserError(f"training.eval_metric '{t.eval_metric}' is unknown: use one of {', '.join(EVAL_METRICS)}.")
    if not 0 <= t.eval_samples <= MAX_EVAL_SAMPLES:
        raise UserError(f"training.eval_samples {t.eval_samples} is outside 0..{MAX_EVAL_SAMPLES}: use e.g. 8 "
                        "(0: eval loss only, no generation).")
    if t.report_to not in TRACKERS:
        raise UserError(f"training.report_to '{t.report_to}' is unknown: use one of {', '.join(TRACKERS)}.")
    _check_ranges(config)
    _check_choices(config)


def _check_choices(config) -> None:
    """Every field whose metadata lists its allowed values (``choices``) holds one of them: a new field
    with choices is checked without a line here."""
    import dataclasses

    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for f in dataclasses.fields(values):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(values, f.name) not in choices:
                allowed = ", ".join(c for c in choices if c) + (" or empty" if "" in choices else "")
                raise UserError(f"{section.name}.{f.name} {getattr(values, f.name)!r} is not one of {allowed}.")


def _check_ranges(config) -> None:
    """Counts past anything that can be meant: refused before they reach a script, a schedule or a seed."""
    d, l, t = config.data, config.lora, config.training
    if t.nodes > MAX_NODES:
        raise UserError(f"training.nodes {t.nodes} is more than the {MAX_NODES} nodes the workbench plans for: "
                        "check --nodes.")
    if t.nodes * t.nproc_per_node > MAX_PROCESSES:
        raise UserError(f"training.nodes x training.nproc_per_node is {t.nodes * t.nproc_per_node:,} processes, "
                        f"more than the {MAX_PROCESSES} GPUs the workbench plans for: check --nodes and "
                        "--nproc-per-node (processes on each node, usually its GPU count).")
    for name in ("max_steps", "save_steps", "eval_steps", "logging_steps", "gradient_accumulation_steps",
                 "per_device_train_batch_size"):
        if getattr(t, name) > MAX_STEP_COUNT:
            raise UserError(f"training.{name} {getattr(t, name):,} is more than {MAX_STEP_COUNT:,}, beyond any run "
                            "the schedule is meant for: check the number.")
    if not 0 <= t.seed < SEED_LIMIT:
        raise UserError(f"training.seed {t.seed} is outside 0..{SEED_LIMIT - 1} (the range every random number "
                        "generator the run seeds accepts): use a smaller seed such as 42.")
    for name, value in (("lora.rank", l.rank), ("lora.alpha", l.alpha), ("data.max_length", d.max_length)):
        if value > 2**31 - 1:
            raise UserError(f"{name} {value:,} is beyond any model's size: check the number.")



def check_parts(l, main_rate: float) -> None:
    """The parts (vision, merger, language) a config trains, and their rates: each error names its field."""
    if l.recipe and l.recipe not in RECIPES:
        raise UserError(f"lora.recipe '{l.recipe}' is not one of {', '.join(RECIPES)}: pick one, or leave it empty.")
    for part in PARTS:
        if getattr(l, part) not in ("", *PART_MODES):
            raise UserError(f"lora.{part} '{getattr(l, part)}' is not one of {', '.join(PART_MODES)}: pick one, or "
                            "leave it empty for the recipe's choice.")
    parts = l.parts()
    if all(mode == "frozen" for mode in parts.values()) and not l.modules_to_save:
        raise UserError("lora.recipe and lora.vision/merger/language leave every part frozen, so nothing would "
                        "train: set at least one part to lora or full (e.g. recipe language-lora).")
    for part in ("vision", "merger"):
        rate = getattr(l, f"{part}_lr")
        if not 0 <= rate <= 1:  # also refuses nan
            raise UserError(f"lora.{part}_lr {rate} is outside [0, 1]: use e.g. 2e-5, or 0 for training.learning_rate.")
        if rate and parts[part] == "frozen":
            raise UserError(f"lora.{part}_lr is {rate:g} but the {part} is frozen: set lora.{part} to lora or full, "
                            "or the rate to 0.")


def video_rules(d) -> None:
    """qwen-vl-utils' own limits (its smart_nframes and smart_resize assert them mid-epoch otherwise)."""
    _positive("data.video_fps", d.video_fps)
    for name in ("video_min_frames", "video_max_frames"):
        value = getattr(d, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise UserError(f"data.{name} is {value!r}: use a whole number of frames, at least 2 (the model reads "
                            "frames in pairs).")
    if d.video_min_frames > d.video_max_frames:
        raise UserError(f"data.video_min_frames ({d.video_min_frames}) is above data.video_max_frames "
                        f"({d.video_max_frames}): lower one or raise the other.")
    for name in ("video_min_pixels", "video_max_pixels", "video_total_pixels"):
        value = getattr(d, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"data.{name} is {value!r}: use a whole number of pixels, or 0 for qwen-vl-utils' "
                            "default.")
    if d.video_min_pixels and d.video_max_pixels and d.video_min_pixels > d.video_max_pixels:
        raise UserError(f"data.video_min_pixels ({d.video_min_pixels}) is above data.video_max_pixels "
                        f"({d.video_max_pixels}): lower one or raise the other.")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{name} must be a positive number, got {value!r}.")
