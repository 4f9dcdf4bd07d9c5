"""Every RunConfig field as a flag of ``train`` and ``launch``, made from the field itself.

``training.max_steps`` is ``--max-steps``, ``data.skip_problem_rows`` is ``--skip-problem-rows`` /
``--no-skip-problem-rows``; the help is the field's help, the allowed values its ``choices``. A
setting added to ``workbench.settings`` is a flag without a line here. A few fields keep the short
names people type (``--model``, ``--dataset``, ``--nproc``) beside their own.
"""

from __future__ import annotations

import argparse

from workbench.settings import config_fields, field_default, json_field

# Short names people type, beside each field's own flag.
ALIASES = {"name_or_path": ("--model",), "train_path": ("--dataset",), "nproc_per_node": ("--nproc",)}
PART_FIELDS = ("recipe", "vision", "merger", "language", "vision_lr", "merger_lr")
CONFIG_DESTS = "_config_dests"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, only=None, skip=()) -> None:
    """One flag per RunConfig field (``only`` a subset, ``skip`` some left out), each defaulting to None:
    only what the user types overrides the config file."""
    group = parser.add_argument_group("settings", "Each flag overrides its field of the config file (or of the "
                                                  "demo's settings without one).")
    dests = list(parser.get_default(CONFIG_DESTS) or [])
    for section, f in config_fields():
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        default, meta = field_default(f), f.metadata
        help_text = f"{section}.{f.name}: {meta.get('help', '')}".replace("%", "%%")  # argparse formats help with %
        kw = {"dest": f.name, "default": None, "help": help_text}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif meta.get("choices") is not None:
            kw["choices"] = list(meta["choices"])
            kw["metavar"] = "{" + ",".join(c or "''" for c in meta["choices"]) + "}"
        elif meta.get("kind") in ("list", "targets"):
            kw["metavar"] = "NAMES" if meta.get("kind") == "list" else "PRESET|NAMES"
        elif meta.get("kind") == "json":
            kw["metavar"] = "JSON"
        else:
            kw["metavar"] = type(default).__name__.upper()
        group.add_argument(*ALIASES.get(f.name, ()), flag(f.name), **kw)
        dests.append((section, f.name))
    parser.set_defaults(**{CONFIG_DESTS: dests})


def config_overrides(args: argparse.Namespace) -> dict:
    """{section: {field: value}} for the flags given; numbers stay text for the config's own checks, which
    name the field."""
    from workbench.planner.request import parse_targets

    overrides: dict = {"model": {}, "data": {}, "lora": {}, "training": {}}
    by_name = {f.name: f for _, f in config_fields()}
    for section, name in getattr(args, CONFIG_DESTS, []):
        value = getattr(args, name, None)
        if value is None:
            continue
        kind = by_name[name].metadata.get("kind")
        if kind == "list":
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif kind == "targets":
            value = parse_targets(value)
        elif kind == "json":
            value = json_field(flag(name), value, "give a map such as '{\"\": \"cpu\"}', or leave the flag out.")
        overrides[section][name] = value
    return overrides
