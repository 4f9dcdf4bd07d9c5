"""Every RunConfig field is a flag of train and launch, made from the field: one field, every surface."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.cli.main import build_parser
from workbench.cli.train import config_from_args
from workbench.config_rules import _check_choices
from workbench.errors import UserError
from workbench.settings import RunConfig, config_fields, field_default, field_help


def _other_value(section, f):
    """A valid value unlike the field's default, as a user would type it."""
    default, meta = field_default(f), f.metadata
    if isinstance(default, bool):
        return (f"--no-{f.name}" if default else f"--{f.name}").replace("_", "-"), not default
    if meta.get("choices"):
        value = next(c for c in meta["choices"] if c and c != default)
        return value, value
    special = {"name_or_path": ("demo-qwen3-vl", "demo-qwen3-vl"), "device_map": ('{"": "cpu"}', {"": "cpu"}),
               "target_modules": ("q_proj,v_proj", ["q_proj", "v_proj"]),
               "modules_to_save": ("lm_head", ["lm_head"]), "eval_split": ("0.1", 0.1),
               "dropout": ("0.2", 0.2), "warmup_ratio": ("0.5", 0.5), "vision_lr": ("0", 0.0),
               "merger_lr": ("0", 0.0), "min_pixels": ("6272", 6272), "num_train_epochs": ("2", 2.0),
               "weight_decay": ("0.1", 0.1), "learning_rate": ("0.0003", 3e-4), "nodes": ("1", 1),
               "nproc_per_node": ("3", 3)}
    if f.name in special:
        return special[f.name]
    if isinstance(default, int):
        return str(default + 7 if default > 0 else 7), default + 7 if default > 0 else 7
    if isinstance(default, float):
        return "0.25", 0.25
    return "some-text", "some-text"


def test_field_names_are_unique_across_sections():
    names = [f.name for _, f in config_fields()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("section,f", config_fields(), ids=lambda x: getattr(x, "name", x))
def test_every_field_is_a_train_flag_that_sets_it(section, f):
    typed, expected = _other_value(section, f)
    flag = typed if typed.startswith("--") else f"--{f.name.replace('_', '-')}"
    argv = ["train", flag] + ([] if typed.startswith("--") else [typed])
    if section == "lora" and f.name in ("vision_lr", "merger_lr"):
        argv += ["--recipe", "vision-lora"]
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    assert getattr(getattr(config, section), f.name) == expected
    assert getattr(getattr(config, section), f.name) != field_default(f) or f.name in ("vision_lr", "merger_lr", "nodes")


def test_launch_takes_every_field_but_the_run_folder():
    parser = build_parser()
    launch = parser._subparsers._group_actions[0].choices["launch"]
    flags = {a.dest for a in launch._actions}
    assert {f.name for _, f in config_fields()} - flags == {"output_dir"}


def test_flag_help_is_the_field_help():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    action = next(a for a in train._actions if a.dest == "max_steps")
    assert field_help("training", "max_steps") in action.help


def test_short_names_stay(tmp_path):
    args = build_parser().parse_args(["train", "--model", "demo", "--dataset", "x.jsonl", "--nproc", "2"])
    config = config_from_args(args)
    assert (config.model.name_or_path, config.data.train_path, config.training.nproc_per_node) == ("demo", "x.jsonl", 2)


def test_a_flag_with_letters_for_a_number_names_the_field():
    args = build_parser().parse_args(["train", "--rank", "eight"])
    with pytest.raises(UserError, match=r"lora\.rank must be an int"):
        config_from_args(args)


def test_a_value_outside_the_choices_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--strategy", "zero3"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_new_field_with_choices_is_checked_without_a_rule():
    @dataclasses.dataclass
    class Section:
        mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})

    @dataclasses.dataclass
    class Config:
        extra: Section = dataclasses.field(default_factory=Section)

    _check_choices(Config())
    with pytest.raises(UserError, match=r"extra\.mode 'c' is not one of a, b"):
        _check_choices(Config(Section("c")))


def test_yaml_round_trip_keeps_every_field(tmp_path):
    raw = RunConfig().to_dict()
    raw["training"]["max_steps"], raw["lora"]["recipe"] = 12, "merger-full"
    path = RunConfig.from_dict(raw).save(tmp_path / "run.yaml")
    assert RunConfig.load(path).to_dict() == raw
