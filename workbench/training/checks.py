"""Checks a RunConfig must pass before anything loads: ours and peft's own.

The LoRA tab calls ``check_run_config`` on every change and shows the first error next to
the form; ``TrainingJob`` would meet the same errors later, after seconds of loading. The
checks touch no process-global state: building ``transformers.TrainingArguments`` resets
accelerate's state, which kills a run training in the same process, so it happens only in
the job itself (``training_arguments``).
"""

from __future__ import annotations

import functools

from workbench.errors import UserError
from workbench.settings import RunConfig

SECTIONS = ("model", "data", "lora", "training")


def config_from_raw(raw: dict) -> RunConfig:
    """RunConfig from a dict that may carry extra top-level keys (e.g. a planner's 'plan')."""
    if not isinstance(raw, dict):
        return RunConfig.from_dict(raw)
    return RunConfig.from_dict({k: v for k, v in raw.items() if k in SECTIONS})


def check_run_config(config: RunConfig, check_output_dir: bool = True, check_files: bool = True) -> None:
    """Raise the first UserError a start would meet before loading: fields, LoRA, the model and
    dataset names, targets, folder. ``check_files=False``: the model and data live on other
    machines (a multi-node launch written here)."""
    from workbench.training.lora import lora_config

    config.validate()
    lora_config(config.lora)
    if check_files:
        check_model_and_data(config)
    t, d = config.training, config.data
    from workbench.demo import is_demo

    from workbench.demo_video import is_demo_dataset

    # the demos evaluate on their own held-out rows
    own_rows = (is_demo(config.model.name_or_path) and not d.train_path) or is_demo_dataset(d.train_path)
    if t.eval_steps > 0 and not d.eval_path and d.eval_split <= 0 and not own_rows:
        raise UserError(f"training.eval_steps is {t.eval_steps} but there is no eval data: set data.eval_path "
                        "or data.eval_split (e.g. 0.05), or set eval_steps to 0.")
    check_tracker(t.report_to)
    if config.model.dtype == "fp16" and not _cuda():
        raise UserError("model.dtype fp16 needs a GPU (mixed precision in fp16 does not run on the CPU): use "
                        "auto or fp32 here.")
    check_targets(config)
    check_device_map(config)
    if check_output_dir and t.output_dir:
        from workbench.training.output import prepare_output_dir

        prepare_output_dir(config, resume=False)


def check_model_and_data(config: RunConfig) -> None:
    """The model resolves (demo, preset, local folder or hub id; nothing downloads) and each dataset
    path is a dataset (exists, starts like one): a start refuses these only after the job began."""
    from workbench.data.formats import check_dataset_path
    from workbench.demo import is_demo
    from workbench.demo_video import demo_dataset_file
    from workbench.models.resolve import locate_model

    locate_model(config.model.name_or_path)
    d = config.data
    if d.train_path or not is_demo(config.model.name_or_path):  # the demo without a dataset trains its own rows
        if not str(d.train_path).strip():
            raise UserError("data.train_path is empty: give the training dataset (a .jsonl or .json file, or a "
                            "Parquet/Arrow table).")
        check_dataset_path(demo_dataset_file(d.train_path), "data.train_path")
    if d.eval_path:
        check_dataset_path(demo_dataset_file(d.eval_path, "heldout"), "data.eval_path")


def check_tracker(report_to: str) -> None:
    """training.report_to names a tracker whose package is installed (transformers would fail at its
    first log, after the model loaded)."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"training.report_to is {report_to} but the {package} package is not installed: "
                        f"`pip install {package}`, or set report_to to none (metrics.jsonl is written either way).")


def check_device_map(config: RunConfig) -> None:
    """A pinned device_map may only name devices this machine has (checked before anything loads)."""
    from workbench import devices

    device_map = config.model.device_map
    if not device_map:
        return
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    gpus = devices.count()
    for value in values:
        text = str(value).strip().lower()
        if text in ("cpu", "disk", "auto", "balanced", "balanced_low_0", "sequential", "meta"):
            if text in ("disk", "meta"):
                raise UserError(f"model.device_map puts modules on '{text}', which training cannot use: "
                                "give GPU indices, or leave the map empty for the planner's map.")
            continue
        index = value if isinstance(value, int) else (int(text.removeprefix("cuda:")) if text.removeprefix("cuda:").isdigit() else None)
        if index is None:
            raise UserError(f"model.device_map names device {value!r}, which is not a GPU index, 'cuda:N' or "
                            "'cpu': fix the map or leave it empty.")
        if index >= gpus:
            have = f"only {gpus} GPU(s)" if gpus else "no GPU"
            raise UserError(f"model.device_map places modules on GPU {index}, but this machine has {have}: "
                            "make a plan for this machine's GPUs on the Memory planner tab (or leave the map "
                            "empty) and apply it.")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments(config: RunConfig, has_eval: bool, **overrides):
    """transformers.TrainingArguments for ``config`` (``overrides``: a placement's own arguments);
    its ValueErrors become UserErrors.

    Only the job calls this (see the module docstring)."""
    from workbench.training.inputs import build_trainer_args

    try:
        return build_trainer_args(config, has_eval=has_eval, **overrides)
    except (ValueError, TypeError) as exc:
        raise UserError(f"Training settings rejected by transformers.TrainingArguments: {exc}") from None


def check_targets(config: RunConfig) -> None:
    """LoRA targets must match linear layers of the model, checked on its meta-device copy.

    peft's LoraConfig accepts any name; only get_peft_model, after the weights loaded,
    would say a name matched nothing. A model we cannot resolve without loading (a hub id
    not in the cache) is skipped here: loading reports it.
    """
    l = config.lora
    if l.parts()["language"] != "lora":  # target_modules names the language model's LoRA targets only
        return
    targets = l.target_modules if isinstance(l.target_modules, str) else tuple(l.target_modules)
    problem = _target_problem(config.model.name_or_path, targets, tuple(l.modules_to_save))
    if problem:
        raise UserError(problem)


@functools.lru_cache(maxsize=64)
def _target_problem(model_name: str, targets, modules_to_save: tuple) -> str | None:
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists

    from workbench.models import build_meta_model, load_model_config
    from workbench.settings import LoraSettings
    from workbench.training.lora import lora_config

    try:
        model = build_meta_model(load_model_config(model_name))
    except UserError:
        return None
    settings = LoraSettings(target_modules=targets if isinstance(targets, str) else list(targets))
    peft_config = lora_config(settings)
    modules = list(model.named_modules())
    if not any(isinstance(m, torch.nn.Linear) and check_target_module_exists(peft_config, n) for n, m in modules):
        shown = targets if isinstance(targets, str) else list(targets)
        return (f"lora.target_modules {shown!r} matches no linear layer of {model_name}: pick a preset "
                "or use names such as q_proj, v_proj.")
    for wanted in modules_to_save:
        if not any(name == wanted or name.endswith("." + wanted) for name, _ in modules):
            return (f"lora.modules_to_save names '{wanted}', which is not a module of {model_name}: "
                    "use e.g. lm_head, or leave it empty.")
    return None
