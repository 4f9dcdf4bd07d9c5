"""LoRA tab: the RunConfig as a form (one widget per field, its help as info text).

The few knobs people change sit up front; the rest are under Advanced. Every change is
checked once by ``workbench.training.checks.check_run_config`` (our field checks and peft's
``LoraConfig``; nothing that touches process-global state) and, when valid, becomes the
shared config; the first error shows above the form and the shared config keeps its last
valid value.

The form is written by the user only. It is re-rendered (``refill``) only when something
replaces the whole config: a loaded YAML file, an applied plan, a dataset chosen on the
Dataset tab. It never re-renders in reaction to the user's own typing, and every change
event runs with ``trigger_mode="always_last"``, so the last keystroke is the one applied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from workbench.errors import UserError
from workbench.paths import configs_root
from workbench.run_folder import CONFIG_NAME
from workbench.runs import headless_command
from workbench.settings import TARGET_PRESETS, RunConfig, config_fields, field_default, json_field
from workbench.training.checks import check_run_config, config_from_raw

CUSTOM = "custom list"
SECTION_TITLES = {"model": "Model", "data": "Data", "lora": "LoRA", "training": "Training"}


def _choices(f: dataclasses.Field):
    """A dropdown's options from the field's metadata; an empty value shows its ``empty_label``."""
    if f.metadata.get("kind") == "targets":
        return [*TARGET_PRESETS, CUSTOM]
    if f.metadata.get("choices") is None:
        return None
    return [(f.metadata.get("empty_label", "empty"), c) if c == "" else c for c in f.metadata["choices"]]


# What people change for most runs, in the order they decide it.
ESSENTIAL = ["model.name_or_path", "data.train_path", "lora.rank", "lora.recipe", "training.learning_rate",
             "training.max_steps", "training.num_train_epochs", "data.max_length", "model.quantization",
             "training.strategy", "training.output_dir"]


FIELDS = [(section, f.name, f) for section, f in config_fields()]
CHOICES = {(section, name): _choices(f) for section, name, f in FIELDS if _choices(f) is not None}
LIST_FIELDS = {(section, name) for section, name, f in FIELDS if f.metadata.get("kind") == "list"}
JSON_FIELDS = {(section, name) for section, name, f in FIELDS if f.metadata.get("kind") == "json"}
# the widgets' order: every field, then the custom target list that sits beside the preset
KEYS = [f"{s}.{n}" for s, n, _ in FIELDS] + ["lora.target_modules_custom"]


# ---- handlers (plain functions: values in, values out) ----------------------------
def form_values(config: dict) -> list:
    """Widget values for a config dict, in KEYS order."""
    cfg = config_from_raw(config).to_dict()
    values = []
    for section, name, _ in FIELDS:
        value = cfg[section][name]
        if (section, name) == ("lora", "target_modules"):
            value = value if isinstance(value, str) else CUSTOM
        elif (section, name) in LIST_FIELDS:
            value = ", ".join(value)
        elif (section, name) in JSON_FIELDS:
            value = json.dumps(value) if value else ""
        values.append(value)
    targets = cfg["lora"]["target_modules"]
    values.append(", ".join(targets) if isinstance(targets, list) else "")
    return values


def raw_from_form(values: list) -> dict:
    """The config dict the form spells; parse errors name the field."""
    by_key = dict(zip(KEYS, values))
    raw: dict = {s: {} for s in SECTION_TITLES}
    for section, name, _ in FIELDS:
        value = by_key[f"{section}.{name}"]
        if (section, name) == ("lora", "target_modules") and value == CUSTOM:
            value = _split(by_key["lora.target_modules_custom"])
            if not value:
                raise UserError("lora.target_modules is 'custom list' but the list is empty: write module "
                                "names such as q_proj, v_proj, or pick a preset.")
        elif (section, name) in LIST_FIELDS:
            value = _split(value)
        elif (section, name) in JSON_FIELDS:
            value = json_field(f"{section}.{name}", value,
                               'paste the planner\'s map such as {"": "cpu"}, or leave it empty.')
        elif isinstance(value, str) and _is_number_field(section, name):
            value = value.strip()
        raw[section][name] = value
    return raw


def apply_form(config: dict, *values) -> tuple[dict, str, str, str]:
    """On every change: (config to share, message, YAML, command). Invalid: the config stays."""
    try:
        candidate = RunConfig.from_dict(raw_from_form(list(values)))
        check_run_config(candidate)
    except UserError as exc:
        return config, f"**Not applied:** {exc}", gr.skip(), gr.skip()
    merged = {**(config or {}), **candidate.to_dict()}  # keeps keys other tabs added (e.g. a plan)
    return merged, "Settings are valid.", *previews(candidate)


def previews(cfg: RunConfig) -> tuple[str, str]:
    """(YAML, headless command) for a valid config."""
    return cfg.to_yaml(), "# save the YAML below as run.yaml, then:\n" + headless_command("run.yaml")


def describe(config: dict) -> tuple[str, str, str]:
    """(message, YAML, headless command) for a config that replaced the form's."""
    try:
        cfg = config_from_raw(config)
        check_run_config(cfg)
    except UserError as exc:
        return f"**Not valid:** {exc}", "", ""
    return "Settings are valid.", *previews(cfg)


def refill(config: dict) -> list:
    """Something replaced the whole config (a file, a plan, a dataset): re-render the form."""
    try:
        values = form_values(config)
    except UserError as exc:
        return [gr.skip()] * len(KEYS) + [f"**The shared settings are not valid:** {exc}", "", ""]
    return values + list(describe(config))


def save_yaml(config: dict, path: str, overwrite: bool, *values) -> str:
    """Write the form as YAML; an existing file is replaced only when ``overwrite`` is ticked.

    It reads the widgets themselves (``values``), not the shared config: a click right after
    the last keystroke must not race that keystroke's change event."""
    if not str(path or "").strip():
        return "Give a file name to save to, e.g. run.yaml."
    target = Path(str(path).strip()).expanduser()
    if not target.is_absolute():  # the server's working folder may be a checkout: never write there
        target = configs_root() / target
    target = target.resolve()
    if target.is_dir():
        return f"{target} is a folder: give a file name such as {target / CONFIG_NAME}."
    if target.exists() and not overwrite:
        return (f"{target} already exists and was not changed: tick 'Overwrite' to replace it, or save as "
                f"{free_name(target).name}.")
    try:
        cfg = RunConfig.from_dict(raw_from_form(list(values))) if values else config_from_raw(config)
        target.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(target)
    except UserError as exc:
        return f"Not saved: {exc}"
    except OSError as exc:
        return f"Not saved: cannot write {target} ({exc.strerror}); choose a folder you can write to."
    return f"Saved to {target}. Run it headless with `{headless_command(str(target))}`."


def free_name(target: Path) -> Path:
    """run.yaml -> run-2.yaml, run-3.yaml, ...: the first name not taken beside ``target``."""
    n = 2
    while (candidate := target.with_name(f"{target.stem}-{n}{target.suffix}")).exists():
        n += 1
    return candidate


def load_yaml(config: dict, path: str | None) -> tuple[dict, str]:
    """Read a YAML config (an uploaded file); on error the current config stays."""
    if not path:
        return config, "Choose a YAML file to load."
    try:
        cfg = RunConfig.load(path)
    except UserError as exc:
        return config, f"**Not loaded:** {exc}"
    return {**(config or {}), **cfg.to_dict()}, f"Loaded {Path(path).name}."


def _split(text) -> list[str]:
    if isinstance(text, list):
        return [str(x).strip() for x in text if str(x).strip()]
    return [part.strip() for part in str(text or "").replace("\n", ",").split(",") if part.strip()]


def _is_number_field(section: str, name: str) -> bool:
    default = _default(section, name)
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def _default(section: str, name: str):
    return field_default(next(f for s, n, f in FIELDS if (s, n) == (section, name)))


# ---- widgets ------------------------------------------------------------------------
def _widget(section: str, name: str, f: dataclasses.Field, value):
    label, info = f"{section}.{name}", f.metadata.get("help", "")
    default = _default(section, name)
    elem_id = f"lora-{section}-{name}".replace("_", "-")
    common = dict(label=label, info=info, elem_id=elem_id)
    if (section, name) == ("model", "name_or_path"):
        from workbench.models import PRESETS

        from workbench.demo import DEMO_NAMES

        return gr.Dropdown([*DEMO_NAMES, *PRESETS], value=value, allow_custom_value=True, **common)
    if (section, name) in CHOICES:
        return gr.Dropdown(CHOICES[(section, name)], value=value, **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(default, int):
        return gr.Number(value=value, precision=0, **common)
    if isinstance(default, float):
        return gr.Number(value=value, **common)
    if (section, name) in JSON_FIELDS:
        return gr.Textbox(value=value, lines=2, placeholder='{"": "cpu"} or empty', **common)
    return gr.Textbox(value=value, **common)


@dataclass
class LoraTab:
    inputs: list          # the form's widgets in KEYS order
    outputs: list         # what ``refill`` writes: the widgets, then message, YAML, command
    loaded: object        # the YAML upload's event: the config was replaced


def build(ctx) -> LoraTab:
    initial = ctx.config.value
    values = dict(zip(KEYS, form_values(initial)))
    status, yaml_text, command_text = describe(initial)
    gr.Markdown("The Training tab starts exactly these settings. Every field explains itself; errors show "
                "here before anything loads.")
    message = gr.Markdown(status, elem_id="lora-message")
    widgets: dict[str, gr.components.Component] = {}
    by_key = {f"{s}.{n}": (s, n, f) for s, n, f in FIELDS}
    with gr.Row(equal_height=False):
        for key in ESSENTIAL:
            widgets[key] = _widget(*by_key[key], values[key])
    with gr.Accordion("Advanced", open=False):
        for section, title in SECTION_TITLES.items():
            gr.Markdown(f"**{title}**")
            with gr.Row(equal_height=False):
                for s, name, f in FIELDS:
                    key = f"{s}.{name}"
                    if s == section and key not in widgets:
                        widgets[key] = _widget(s, name, f, values[key])
                if section == "lora":
                    widgets["lora.target_modules_custom"] = gr.Textbox(
                        value=values["lora.target_modules_custom"], label="custom target modules",
                        info="Used when target modules is 'custom list': module names separated by commas, "
                             "e.g. q_proj, v_proj.", elem_id="lora-target-modules-custom")
    inputs = [widgets[key] for key in KEYS]
    with gr.Row():
        path = gr.Textbox(label="Save as", value="run.yaml", scale=3, elem_id="lora-save-path",
                          info=f"A file name alone saves in {configs_root()}; a full path saves there.")
        overwrite = gr.Checkbox(label="Overwrite", value=False, scale=1)
        save = gr.Button("Save YAML", scale=1, elem_id="lora-save")
    upload = gr.File(label="Load YAML", file_types=[".yaml", ".yml"], type="filepath", height=90)
    file_message = gr.Markdown(elem_id="lora-file-message")
    command = gr.Code(command_text, label="Headless command", language="shell", interactive=False)
    yaml_view = gr.Code(yaml_text, label="YAML", language="yaml", interactive=False)

    for component in inputs:
        component.change(apply_form, inputs=[ctx.config, *inputs], outputs=[ctx.config, message, yaml_view, command],
                         show_progress="hidden", trigger_mode="always_last")
    save.click(save_yaml, inputs=[ctx.config, path, overwrite, *inputs], outputs=file_message)
    loaded = upload.upload(load_yaml, inputs=[ctx.config, upload], outputs=[ctx.config, file_message])
    return LoraTab(inputs=inputs, outputs=[*inputs, message, yaml_view, command], loaded=loaded)
