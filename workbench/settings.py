"""One RunConfig (model, data, lora, training): dataclasses, YAML load/save, validation.

The same object sits behind the LoRA/Training form, the YAML file in every run
directory and the CLI flags. Each field carries its help text in ``metadata["help"]``
(what it does and when to change it). ``validate()`` raises ``UserError`` naming the
field (``lora.rank``) and the fix; peft's and transformers' own checks run on top of it
in ``workbench.training`` before anything loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from workbench.config_rules import (  # noqa: F401  (the allowed values are part of the settings' interface)
    DATA_FORMATS, DEMO_MODEL, DTYPES, EVAL_METRICS, LANGUAGE_LINEAR, MAX_CONFIG_BYTES, MAX_NODES, MAX_PATH_CHARS, MAX_PROCESSES,
    MAX_STEP_COUNT, PART_MODES, PARTS, QUANTIZATIONS, RECIPES, SCHEDULERS, SEED_LIMIT, STRATEGIES, TARGET_PRESETS, TRACKERS,
    target_modules_for, validate)
from workbench.errors import UserError
from workbench.strict_yaml import PlainDumper, StrictLoader

def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelSettings:
    name_or_path: str = _f(DEMO_MODEL, "Base model: 'demo' (the embedded tiny Qwen2-VL; demo-qwen2.5-vl and "
                           "demo-qwen3-vl for the other families), a preset (qwen2-vl-7b-instruct, "
                           "qwen2.5-vl-7b-instruct, qwen3-vl-8b-instruct, ...), a local folder or a hub id.")
    dtype: str = _f("auto", "Weight dtype: auto picks bf16 on GPUs that support it, fp32 on CPU. "
                    "Use fp16 only on GPUs without bf16.", choices=DTYPES)
    device_map: Any = _f(None, "Where each module lives. Empty: computed by the memory planner for "
                         "the detected GPUs ({'': 'cpu'} without GPUs). Paste a planner map to pin it.", kind="json")
    quantization: str = _f("none", "Store the base's language-model linears in 4 bits (nf4: QLoRA, about 0.52 "
                           "bytes per weight) or 8 bits (int8) while training; the vision tower, embeddings "
                           "and lm_head stay in dtype. Use nf4 when the planner says the bf16 base does not fit; "
                           "steps are slower. The adapter loads on the unquantised base for inference.",
                           choices=QUANTIZATIONS)


@dataclass
class DataSettings:
    train_path: str = _f("", "Training dataset: a JSON/JSONL file, a Parquet or Arrow file or a datasets folder, "
                         "in any layout of docs/data-formats.md. Empty with the demo model: the demo's rows.")
    eval_path: str = _f("", "Held-out dataset file for evaluation during training (eval loss and a task metric, see "
                        "training.eval_steps). Empty: none (or eval_split; the demo model uses its held-out rows).")
    image_folder: str = _f("", "Folder that relative image paths start at, for both files. Empty: each "
                           "dataset file's own folder. Set it when the images live apart from the file.")
    format: str = _f("auto", "Dataset layout: auto (read from the rows' keys), swift, sharegpt, messages, "
                     "query-response, alpaca or cauldron. Set it when auto-detection guesses wrong.",
                     choices=DATA_FORMATS)
    eval_split: float = _f(0.0, "Share of training rows held out for eval loss when no eval file "
                           "is given (0 to 0.5). Raise it to watch for overfitting.")
    max_length: int = _f(2048, "Longest row in tokens (text + visual). Longer rows are refused by "
                         "validation. Take p95 or max from the Dataset tab; lower it to save memory.")
    trained_tokens: int = _f(0, "Answer (trained) tokens per row, for the memory planner's loss term: set "
                             "with max_length by the Dataset tab's 'Use as training data' (p95 or max). 0: not "
                             "measured, the planner counts every token of a row (the upper bound).")
    min_pixels: int = _f(3136, "Smallest image area in pixels after resizing (multiple of 28x28). "
                         "Rarely changed.")
    max_pixels: int = _f(1003520, "Largest image area in pixels after resizing; every 28x28 block is "
                         "one visual token. Lower it first when memory is short.")
    video_fps: float = _f(2.0, "Frames sampled per second of video (qwen-vl-utils' fps; a row's own fps or nframes "
                          "wins). Each pair of frames costs (H/28)x(W/28) tokens: lower it first for long videos.")
    video_min_frames: int = _f(4, "Fewest frames sampled from a video (qwen-vl-utils' min_frames), never more than "
                               "it has.")
    video_max_frames: int = _f(768, "Most frames sampled from a video (qwen-vl-utils' max_frames). Tokens and "
                               "vision-tower memory grow with it: lower it when long videos do not fit.")
    video_min_pixels: int = _f(0, "Smallest frame area in pixels after resizing. 0: qwen-vl-utils' default, 128 "
                               "tokens a frame (100352 pixels for Qwen2-VL and Qwen2.5-VL, 131072 for Qwen3-VL).")
    video_max_pixels: int = _f(0, "Largest frame area in pixels after resizing. 0: qwen-vl-utils' default, 768 "
                               "tokens a frame (602112 pixels; 786432 for Qwen3-VL), less when video_total_pixels "
                               "shared over the frames is smaller. Below 128 tokens a frame it lowers "
                               "video_min_pixels with it.")
    video_total_pixels: int = _f(0, "Pixels of all of a video's frames together; frames shrink to fit. 0: "
                                 "qwen-vl-utils' default (90% of 128000 tokens, about 90 million pixels).")
    allow_private_urls: bool = _f(False, "Fetch image URLs that point into this machine or its private network "
                                  "(127.0.0.1, 10.x, 192.168.x, link-local, ...). Off: a dataset's URLs may only "
                                  "name public hosts, so a downloaded dataset cannot probe your network. Turn on "
                                  "only for datasets you trust that use an image server of your own.")
    packing: bool = _f(False, "Pack whole rows end to end into sequences of up to max_length tokens (no "
                       "padding; each row keeps its own positions and never attends to its neighbours). A "
                       "step then trains batch-size sequences of several rows each: fewer steps per epoch, "
                       "the same loss per row. Turn on when row lengths vary a lot (the Dataset tab's p50 "
                       "far below max_length); off for rows of similar length.")
    skip_problem_rows: bool = _f(False, "Train on the valid rows only: rows the data check refuses (a missing "
                                 "image, too long, malformed) are skipped, their count said when the run starts "
                                 "and their list kept in the run folder (skipped-rows.jsonl). Off: any problem "
                                 "row refuses the start, so nothing is left out unnoticed.")


@dataclass
class LoraSettings:
    rank: int = _f(8, "LoRA rank r: size of the update. 8-16 for most tasks; raise for large "
                   "domain shifts (memory and time grow linearly).")
    alpha: int = _f(16, "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA). "
                    "Usually 2 x rank.")
    dropout: float = _f(0.05, "Dropout on the LoRA input (0 to <1). Raise on small datasets that "
                        "overfit.")
    target_modules: Any = _f("language-all-linear", "Which layers get LoRA: a preset ("
                             + ", ".join(TARGET_PRESETS) + ") or a list of module names.", kind="targets")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling (alpha/sqrt(r)); helps at high ranks.")
    use_dora: bool = _f(False, "DoRA (weight-decomposed LoRA): sometimes better quality, slower and "
                        "more memory.")
    modules_to_save: Any = _f([], "Modules trained in full besides LoRA (e.g. lm_head). Costs their "
                              "full size in gradients and optimizer state.", kind="list")
    recipe: str = _f("", "What to train, in one word: language-lora (LoRA on the language model), merger-full "
                     "(+ the merger trained in full), vision-lora (+ LoRA on the vision tower and merger), "
                     "merger-only (only the merger, in full). Empty: what target_modules reaches (today's "
                     "behaviour). vision, merger and language below override it part by part.",
                     choices=("", *RECIPES), empty_label="by targets")
    vision: str = _f("", "The vision tower's blocks: frozen, lora or full. Empty: as the recipe says. Training it "
                     "stores its activations for backward (see the planner) and vLLM does not apply LoRA to it.",
                     choices=("", *PART_MODES), empty_label="as the recipe says")
    merger: str = _f("", "The merger (projector from the vision tower to the language model): frozen, lora or "
                     "full. Empty: as the recipe says. full costs little: a few million parameters.",
                     choices=("", *PART_MODES), empty_label="as the recipe says")
    language: str = _f("", "The language model: frozen, lora (on target_modules) or full (every weight: its "
                       "size again in weights, gradients and fp32 AdamW states). Empty: as the recipe says.",
                       choices=("", *PART_MODES), empty_label="as the recipe says")
    vision_lr: float = _f(0.0, "Learning rate of the vision tower's parameters; 0: training.learning_rate. "
                          "Usually 5-10x lower than the language model's (e.g. 2e-5).")
    merger_lr: float = _f(0.0, "Learning rate of the merger's parameters; 0: training.learning_rate. A fully "
                          "trained merger often takes 1e-5 to 1e-4, LoRA on it the main rate.")

    def parts(self) -> dict[str, str]:
        """{vision, merger, language: frozen | lora | full}: explicit fields, else the recipe, else what
        target_modules reaches (its presets may also reach the merger and the tower)."""
        if self.recipe:
            base = dict(RECIPES[self.recipe])
        else:
            reach = self.target_modules if isinstance(self.target_modules, str) else ""
            base = {"vision": "lora" if reach == "language-and-vision" else "frozen",
                    "merger": "lora" if reach in ("language-and-merger", "language-and-vision") else "frozen",
                    "language": "lora"}
        return {part: getattr(self, part) or base[part] for part in PARTS}


@dataclass
class TrainingSettings:
    output_dir: str = _f("", "Run directory. Empty: a new folder under the workbench's runs folder. "
                         "An existing run is never overwritten: resume it or pick a new folder.")
    learning_rate: float = _f(1e-4, "Peak learning rate (the language model's, and every part's without a "
                              "rate of its own). 1e-4 to 2e-4 is usual for LoRA; lower it if the loss spikes.")
    weight_decay: float = _f(0.0, "AdamW weight decay on the trained weights (never on norms and biases). 0 is "
                             "usual for LoRA; 0.01-0.1 for fully trained parts.")
    lr_scheduler_type: str = _f("cosine", "Schedule after warmup: " + ", ".join(SCHEDULERS) + ".", choices=SCHEDULERS)
    warmup_ratio: float = _f(0.03, "Share of steps spent warming up the learning rate (0 to 1).")
    num_train_epochs: float = _f(1.0, "Passes over the data; ignored when max_steps > 0.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use num_train_epochs).")
    per_device_train_batch_size: int = _f(1, "Rows per step on each process. Memory grows with it; "
                                          "use gradient accumulation to grow the effective batch.")
    gradient_accumulation_steps: int = _f(8, "Steps to accumulate before each update. Effective batch "
                                          "= batch size x this.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: much less memory, "
                                      "about 30% slower. Turn off only when memory is plentiful.")
    loss_on_trained_tokens_only: bool = _f(True, "Compute logits and loss only where the label is trained "
                                           "(the answers), not over the image and prompt tokens: the same "
                                           "loss and gradients with far less memory on the lm_head GPU. "
                                           "Turn off only to compare with the plain full-vocabulary loss.")
    eval_steps: int = _f(0, "Evaluate every N steps and before the first (0: never): eval loss on the held-out rows "
                         "and a task metric on eval_samples of them, answered greedily by the model being trained. "
                         "Needs data.eval_path or data.eval_split (the demo uses its held-out rows). Make save_steps "
                         "a multiple of it so each checkpoint has a score and the best one is kept.")
    eval_samples: int = _f(8, "Held-out rows answered (greedy generation) at each evaluation for the task metric. A "
                           "check, not a benchmark: each row costs one generation; raise it for a steadier score.")
    eval_metric: str = _f("auto", "How an answer is scored at each evaluation (0..1, higher is better): auto (iou for "
                          "grounding rows, cer for OCR-like prompts, exact for short answers, rouge-l otherwise), "
                          "exact (normalised match), rouge-l, bleu, iou (accuracy at IoU 0.5 of the boxes) or cer "
                          "(1 - character error rate). Set it when auto picks the wrong one.", choices=EVAL_METRICS)
    report_to: str = _f("none", "Also log to an experiment tracker through transformers' report_to: none, "
                        "tensorboard (event files in RUN/runs; needs `pip install tensorboard`), wandb or mlflow "
                        "(each needs its package installed and configured). metrics.jsonl is written either way.",
                        choices=TRACKERS)
    save_steps: int = _f(100, "Save a checkpoint every N steps (0: only at the end).")
    save_total_limit: int = _f(3, "Keep at most this many checkpoints (oldest removed first).")
    logging_steps: int = _f(1, "Log loss every N steps.")
    seed: int = _f(42, "Random seed for data order and LoRA initialisation.")
    strategy: str = _f("device_map", "How the GPUs share the work: device_map (one process, layers spread "
                       "over the GPUs, one busy at a time), ddp (one full replica per GPU: fastest when the "
                       "model fits on one), fsdp (FSDP2: weights sharded over every GPU of every node). The "
                       "Memory planner recommends one.", choices=STRATEGIES)
    nodes: int = _f(1, "Machines taking part (ddp/fsdp). More than 1: write the launch files with "
                    "`python -m workbench launch` and start them on every node.")
    nproc_per_node: int = _f(0, "Processes (GPUs) per node for ddp/fsdp; 0: every visible GPU (2 CPU "
                             "processes on a machine without GPUs).")


@dataclass
class RunConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    # ---- conversion -------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> "RunConfig":
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError("The config must be a mapping with sections model, data, lora, training; "
                            f"got {type(raw).__name__}.")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            shown = ", ".join(repr(str(k)[:80]) for k in sorted(unknown, key=str)[:5])
            raise UserError(f"Unknown config section(s) {shown}: use model, data, lora, training.")
        sections = {}
        for f in fields(cls):
            section_type = f.default_factory  # the section's dataclass
            values = raw.get(f.name) or {}
            if not isinstance(values, dict):
                raise UserError(f"Config section '{f.name}' must be a mapping of fields, got {type(values).__name__}.")
            known = {g.name: g for g in fields(section_type)}
            for key in values:
                if key not in known:
                    raise UserError(f"Unknown field '{f.name}.{str(key)[:80]}': valid fields are {', '.join(known)}.")
            kwargs = {key: _coerce(f"{f.name}.{key}", known[key], value) for key, value in values.items()}
            sections[f.name] = section_type(**kwargs)
        config = cls(**sections)
        config.validate()
        return config

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=PlainDumper, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        from workbench.data.reading import read_bounded

        path = Path(path)
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist or is not a file: pass a YAML file written by the workbench.")
        try:
            text = read_bounded(path, MAX_CONFIG_BYTES, "Config file",
                                "far more than a run config; pass the run.yaml the LoRA tab saves").decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"Config file {path} is not UTF-8 text: save it again as UTF-8 YAML (the LoRA tab writes one).") from None
        except OSError as exc:
            raise UserError(f"Config file {path} cannot be read ({exc.strerror}): check its permissions.") from None
        if not text.strip():
            raise UserError(f"Config file {path} is empty: pass a YAML file saved by the LoRA tab or a run's run.yaml.")
        if len(text) > MAX_CONFIG_BYTES:
            raise UserError(f"Config file {path} is {len(text) // 1024} KiB, far more than a run config: pass the "
                            "run.yaml the LoRA tab saves.")
        try:
            raw = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader, stricter
        except (yaml.composer.ComposerError, yaml.constructor.ConstructorError) as exc:
            if exc.problem and (" alias " in exc.problem or "appears twice" in exc.problem):
                raise UserError(f"Config file {path} is refused: {exc.problem}.") from None
            raise UserError(f"Config file {path} is not readable YAML ({str(exc).splitlines()[0]}): fix the syntax or save it again from the LoRA tab.") from None
        except yaml.YAMLError as exc:
            raise UserError(f"Config file {path} is not readable YAML ({str(exc).splitlines()[0]}): fix the syntax or save it again from the LoRA tab.") from None
        except RecursionError:
            raise UserError(f"Config file {path} is nested too deeply to be a run config: save it again from the LoRA tab.") from None
        return cls.from_dict(raw)

    def replace(self, **sections) -> "RunConfig":
        """A copy with some fields changed: ``cfg.replace(training={"max_steps": 5})``."""
        raw = self.to_dict()
        for name, values in sections.items():
            raw[name].update(values)
        return RunConfig.from_dict(raw)

    # ---- validation -------------------------------------------------------------
    def validate(self) -> None:
        """Field-level checks that need no model: each error names the field and the fix."""
        validate(self)


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """Accept YAML/form values of the right kind; refuse the rest naming the field."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value is None:
        return default if not isinstance(default, (int, float, bool)) or f.name in ("device_map",) else _bad(name, value, default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        return _bad(name, value, default)
    if isinstance(default, (int, float)):  # bool was handled above
        number = value
        if isinstance(value, str):  # a flag or a form box: "12" stays an exact int, "1e-4" and "2.0" parse as floats
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    return _bad(name, value, default)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return _bad(name, value, default)
        if isinstance(default, float):
            return float(number)
        if isinstance(number, int):
            return number
        if number.is_integer():
            return int(number)
        return _bad(name, value, default)
    if isinstance(default, str) and f.name != "target_modules":
        if isinstance(value, str):
            return value
        return _bad(name, value, default)
    return value


def _bad(name, value, default):
    shown = "an empty box" if value is None or value == "" else repr(value)  # a number box with letters sends None
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    kind = type(default).__name__
    raise UserError(f"{name} must be {'an' if kind == 'int' else 'a'} {kind} like {default!r}, got {shown}.")


def config_fields() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) for every RunConfig field, in declaration order: what the LoRA form, the CLI flags
    of train and launch, and YAML are made from. Field names are unique across sections (a test pins it),
    so ``--max-steps`` names one field."""
    return [(section.name, f) for section in fields(RunConfig) for f in fields(section.default_factory)]


def field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def json_field(name: str, text: Any, fix: str) -> Any:
    """A JSON field (model.device_map) typed as text: '' is empty (None); bad JSON names ``name`` and the ``fix``."""
    import json

    if isinstance(text, dict) or text is None:
        return text
    text = str(text).strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): {fix}") from None


def field_help(section: str, name: str) -> str:
    """The help text of ``section.name`` (for forms and CLI flags)."""
    section_type = {f.name: f.default_factory for f in fields(RunConfig)}[section]
    return {f.name: f.metadata.get("help", "") for f in fields(section_type)}[name]
