"""LoRA tab: the RunConfig as a form (one widget per field, its help as info text).

Every edit is checked at once by ``workbench.training.checks.check_run_config`` (our
field checks, then ``peft.LoraConfig`` and ``transformers.TrainingArguments``); the
first error shows next to the form and the shared config keeps its last valid value.
Changes made by other tabs (the planner's map, the Dataset tab's file) arrive through
``state.config.change`` and refill the form.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gradio as gr

from workbench.cli.train import headless_command
from workbench.errors import UserError
from workbench.settings import DTYPES, SCHEDULERS, STRATEGIES, TARGET_PRESETS, RunConfig
from workbench.training.checks import check_run_config, config_from_raw

CUSTOM = "custom list"
CHOICES = {("model", "dtype"): list(DTYPES), ("training", "lr_scheduler_type"): list(SCHEDULERS),
           ("training", "strategy"): list(STRATEGIES),
           ("data", "format"): ["auto", "swift", "sharegpt", "messages"],
           ("lora", "target_modules"): [*TARGET_PRESETS, CUSTOM]}
LIST_FIELDS = {("lora", "modules_to_save")}
JSON_FIELDS = {("model", "device_map")}
SECTION_TITLES = {"model": "Model", "data": "Data", "lora": "LoRA", "training": "Training"}


def form_fields() -> list[tuple[str, str, dataclasses.Field]]:
    """(section, name, field) for every RunConfig field, in declaration order."""
    out = []
    for section in dataclasses.fields(RunConfig):
        out += [(section.name, f.name, f) for f in dataclasses.fields(section.default_factory)]
    return out


FIELDS = form_fields()
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
            value = _json(f"{section}.{name}", value)
        elif isinstance(value, str) and _is_number_field(section, name):
            value = value.strip()
        raw[section][name] = value
    return raw


def apply_form(config: dict, *values) -> tuple[dict, str, str, str]:
    """On every edit: (config to share, message, YAML, command). Invalid: the config stays."""
    try:
        raw = raw_from_form(list(values))
        candidate = RunConfig.from_dict(raw)
        check_run_config(candidate)
    except UserError as exc:
        return config, f"**Not applied:** {exc}", *describe(config)[1:]
    merged = {**(config or {}), **candidate.to_dict()}  # keeps keys other tabs added (e.g. a plan)
    return merged, *describe(merged)


def describe(config: dict) -> tuple[str, str, str]:
    """(message, YAML, headless command) for a config dict."""
    try:
        cfg = config_from_raw(config)
        check_run_config(cfg)
    except UserError as exc:
        return f"**Not valid:** {exc}", "", ""
    command = ("# save the YAML below as run.yaml, then:\n" + headless_command("run.yaml"))
    return "Settings are valid.", cfg.to_yaml(), command


def on_config_change(config: dict) -> list:
    """Another tab changed the shared config: refill the form and the previews."""
    try:
        values = form_values(config)
    except UserError as exc:
        return [gr.skip()] * len(KEYS) + [f"**The shared settings are not valid:** {exc}", "", ""]
    return values + list(describe(config))


def save_yaml(config: dict, path: str, overwrite: bool) -> str:
    """Write the config as YAML; an existing file is replaced only when ``overwrite`` is ticked."""
    if not str(path or "").strip():
        return "Give a file name to save to, e.g. run.yaml."
    target = Path(path).expanduser()
    if target.is_dir():
        return f"{target} is a folder: give a file name such as {target / 'run.yaml'}."
    if target.exists() and not overwrite:
        return f"{target} already exists: tick 'Overwrite' to replace it, or choose another name."
    try:
        cfg = config_from_raw(config)
        target.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(target)
    except UserError as exc:
        return f"Not saved: {exc}"
    except OSError as exc:
        return f"Not saved: cannot write {target} ({exc.strerror}); choose a folder you can write to."
    return f"Saved to {target}. Run it headless with `{headless_command(str(target))}`."


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


def _json(name: str, text):
    if isinstance(text, dict) or text is None:
        return text
    text = str(text).strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): paste the planner's map "
                        'such as {"": "cpu"}, or leave it empty.') from None


def _is_number_field(section: str, name: str) -> bool:
    default = _default(section, name)
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def _default(section: str, name: str):
    f = next(f for s, n, f in FIELDS if (s, n) == (section, name))
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# ---- widgets ------------------------------------------------------------------------
def _widget(section: str, name: str, f: dataclasses.Field, value):
    label, info = name.replace("_", " "), f.metadata.get("help", "")
    default = _default(section, name)
    if (section, name) in CHOICES:
        return gr.Dropdown(CHOICES[(section, name)], value=value, label=label, info=info)
    if isinstance(default, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if isinstance(default, int):
        return gr.Number(value=value, label=label, info=info, precision=0)
    if isinstance(default, float):
        return gr.Number(value=value, label=label, info=info)
    if (section, name) in JSON_FIELDS:
        return gr.Textbox(value=value, label=label, info=info, lines=2, placeholder='{"": "cpu"} or empty')
    return gr.Textbox(value=value, label=label, info=info)


def build(state) -> None:
    initial = state.config.value
    values = dict(zip(KEYS, form_values(initial)))
    status, yaml_text, command_text = describe(initial)
    gr.Markdown("Every field explains itself; errors show here before anything loads. "
                "The Training tab starts exactly these settings.")
    message = gr.Markdown(status)
    widgets: dict[str, gr.components.Component] = {}
    for section, title in SECTION_TITLES.items():
        with gr.Accordion(title, open=section in ("lora", "training")):
            with gr.Row(equal_height=False):
                for s, name, f in FIELDS:
                    if s == section:
                        widgets[f"{s}.{name}"] = _widget(s, name, f, values[f"{s}.{name}"])
                if section == "lora":
                    widgets["lora.target_modules_custom"] = gr.Textbox(
                        value=values["lora.target_modules_custom"], label="custom target modules", info="Used when target modules is 'custom list': module "
                        "names separated by commas, e.g. q_proj, v_proj.")
    inputs = [widgets[key] for key in KEYS]
    with gr.Row():
        path = gr.Textbox(label="Save as", value="run.yaml", scale=3)
        overwrite = gr.Checkbox(label="Overwrite", value=False, scale=1)
        save = gr.Button("Save YAML", scale=1)
    upload = gr.File(label="Load YAML", file_types=[".yaml", ".yml"], type="filepath")
    file_message = gr.Markdown()
    command = gr.Code(command_text, label="Headless command", language="shell", interactive=False)
    yaml_view = gr.Code(yaml_text, label="YAML", language="yaml", interactive=False)

    for component in inputs:
        component.input(apply_form, inputs=[state.config, *inputs],
                        outputs=[state.config, message, yaml_view, command], show_progress="hidden")
    state.config.change(on_config_change, inputs=state.config, outputs=[*inputs, message, yaml_view, command],
                        show_progress="hidden")
    save.click(save_yaml, inputs=[state.config, path, overwrite], outputs=file_message)
    upload.upload(load_yaml, inputs=[state.config, upload], outputs=[state.config, file_message])
    state.components["lora_form"] = widgets
