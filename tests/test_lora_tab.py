"""The LoRA form: values <-> RunConfig, validation messages next to the form, YAML save/load."""

import pytest

from workbench.settings import RunConfig
from workbench.ui import lora_tab


@pytest.fixture
def config(demo_config):
    return {**demo_config.to_dict(), "plan": {"devices": []}}  # a key another tab added survives


def is_skip(value):
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def edit(config, **changes):
    values = dict(zip(lora_tab.KEYS, lora_tab.form_values(config)))
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return lora_tab.apply_form(config, *[values[k] for k in lora_tab.KEYS])


def test_form_round_trips_the_config(config, demo_config):
    shared, message, yaml_text, command = edit(config)
    assert message == "Settings are valid."
    assert RunConfig.from_dict({k: v for k, v in shared.items() if k != "plan"}) == demo_config
    assert shared["plan"] == {"devices": []}
    assert "rank: 16" in yaml_text and "python -m workbench train run.yaml" in command
    assert len(lora_tab.KEYS) == len(lora_tab.FIELDS) + 1  # every field has a widget, plus the custom list


def test_an_edit_reaches_the_shared_config(config):
    shared, message, _, _ = edit(config, lora__rank=4, lora__target_modules="custom list",
                                 lora__target_modules_custom="q_proj, v_proj", model__device_map='{"": "cpu"}')
    assert message == "Settings are valid."
    assert shared["lora"]["rank"] == 4 and shared["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert shared["model"]["device_map"] == {"": "cpu"}


@pytest.mark.parametrize("changes, words", [
    ({"lora__rank": 0}, "lora.rank must be a positive number"),
    ({"lora__dropout": 1.5}, "lora.dropout 1.5 is outside [0, 1)"),
    ({"training__learning_rate": None}, "training.learning_rate must be a float"),
    ({"lora__target_modules": "custom list", "lora__target_modules_custom": " "}, "the list is empty"),
    ({"lora__target_modules": "custom list", "lora__target_modules_custom": "qq_proj"},
     "lora.target_modules ['qq_proj'] matches no linear layer of demo"),
    ({"lora__modules_to_save": "lm_hed"}, "lora.modules_to_save names 'lm_hed'"),
    ({"model__device_map": "{cpu}"}, "model.device_map is not valid JSON"),
    ({"data__min_pixels": 10**7}, "data.min_pixels (10000000) is larger than data.max_pixels"),
])
def test_validation_message_names_the_field_and_keeps_the_config(config, changes, words):
    shared, message, yaml_text, _ = edit(config, **changes)
    assert message.startswith("**Not applied:**") and words in message, message
    assert shared is config  # nothing half-applied
    assert is_skip(yaml_text)  # the preview keeps showing the valid settings in force


def test_eval_steps_need_eval_data_except_the_demos_own_held_out_rows(config, demo):
    _, message, _, _ = edit(config, training__eval_steps=10, data__train_path=str(demo.train))
    assert message.startswith("**Not applied:**") and "training.eval_steps is 10 but there is no eval data" in message
    shared, message, _, _ = edit(config, training__eval_steps=10)  # the demo without a dataset: its held-out rows
    assert message == "Settings are valid." and shared["training"]["eval_steps"] == 10


def test_an_existing_output_dir_is_refused_before_start(config, tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    _, message, _, _ = edit(config, training__output_dir=str(tmp_path))
    assert "already holds files" in message


def test_other_tabs_changes_refill_the_form(config, demo):
    planned = {**config, "model": {**config["model"], "device_map": {"": "cpu"}},
               "data": {**config["data"], "train_path": str(demo.train)}}
    out = lora_tab.refill(planned)
    values = dict(zip(lora_tab.KEYS, out))
    assert values["model.device_map"] == '{"": "cpu"}' and values["data.train_path"] == str(demo.train)
    assert out[len(lora_tab.KEYS)] == "Settings are valid."


def test_yaml_save_never_overwrites_without_asking_and_loads_back(config, tmp_path):
    path = tmp_path / "run.yaml"
    assert "Saved to" in lora_tab.save_yaml(config, str(path), False)
    path.write_text("# my edits\n" + path.read_text())
    assert "already exists" in lora_tab.save_yaml(config, str(path), False)
    assert path.read_text().startswith("# my edits")
    assert "Saved to" in lora_tab.save_yaml(config, str(path), True)
    changed = {**config, "lora": {**config["lora"], "rank": 32}}
    lora_tab.save_yaml(changed, str(tmp_path / "other.yaml"), False)
    loaded, message = lora_tab.load_yaml(config, str(tmp_path / "other.yaml"))
    assert loaded["lora"]["rank"] == 32 and loaded["plan"] == {"devices": []} and "Loaded" in message
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: {rnak: 3}\n")
    same, message = lora_tab.load_yaml(config, str(bad))
    assert same is config and "Unknown field 'lora.rnak'" in message


def accelerator_state_survives(action) -> bool:
    """Does a Trainer's accelerate state (process-wide) survive ``action``?"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True)  # what a running Trainer holds
    action()
    return "num_processes" in AcceleratorState._shared_state


def test_validation_touches_no_global_state_of_a_running_trainer(config):
    # Building TrainingArguments (which the old check did on every keystroke) resets
    # accelerate's process-wide state: a run training in the same process then died with
    # "AcceleratorState object has no attribute num_processes".
    from workbench.training.checks import training_arguments

    cfg = RunConfig.from_dict({k: v for k, v in config.items() if k != "plan"}).replace(training={"output_dir": "x"})
    assert not accelerator_state_survives(lambda: training_arguments(cfg, has_eval=False))  # the hazard is real
    assert accelerator_state_survives(lambda: [edit(config, lora__rank=r, training__max_steps=10 * r) for r in (4, 8)])


def test_the_form_is_refilled_only_when_something_replaced_the_config():
    # A change handler that wrote back into the widgets while the user typed lost keystrokes:
    # the form's own change events write the shared config, never the widgets.
    import gradio as gr

    from workbench.session import Workbench
    from workbench.ui.app import LaunchOptions, TabContext

    with gr.Blocks() as demo:
        ctx = TabContext(options=LaunchOptions(), session=Workbench(), config=gr.State(RunConfig().to_dict()))
        tab = lora_tab.build(ctx)
    widget_ids = {w._id for w in tab.inputs}
    for dep in demo.config["dependencies"]:
        triggers = {t[0] for t in dep["targets"]}
        if triggers & widget_ids:
            assert not set(dep["outputs"]) & widget_ids, dep
            assert dep["trigger_mode"] == "always_last", dep
    state_changes = [d for d in demo.config["dependencies"] if ctx.config._id in {t[0] for t in d["targets"]}]
    assert state_changes == []  # nothing listens to the config state itself


@pytest.mark.parametrize("changes, words", [
    ({"model__name_or_path": "qwen9-vl-13b"}, "Unknown model 'qwen9-vl-13b'"),
    ({"model__name_or_path": "/nowhere/model"}, "does not exist"),
    ({"data__train_path": "/etc/passwd"}, "data.train_path /etc/passwd is not a dataset"),
    ({"data__train_path": "/etc"}, "data.train_path /etc is a folder"),
    ({"data__train_path": "/nowhere/train.jsonl"}, "data.train_path /nowhere/train.jsonl does not exist"),
    ({"data__eval_path": "/etc/passwd"}, "data.eval_path /etc/passwd is not a dataset"),
])
def test_a_model_or_dataset_that_cannot_be_is_not_valid(config, changes, words):
    # These said "Settings are valid." and only Start failed (after making a run folder).
    shared, message, _, _ = edit(config, **changes)
    assert message.startswith("**Not applied:**") and words in message, message
    assert shared is config


def test_a_bare_yaml_name_saves_under_the_workbench_home_and_says_the_full_path(config, tmp_path, monkeypatch):
    from workbench.paths import configs_root

    monkeypatch.chdir(tmp_path)  # the server's working folder (a checkout, say) gets nothing
    name = f"walk-{tmp_path.name}.yaml"
    message = lora_tab.save_yaml(config, name, False)
    target = configs_root() / name
    assert message.startswith(f"Saved to {target.resolve()}.") and target.is_file()
    assert not (tmp_path / name).exists()
    target.write_text("# mine\n")
    message = lora_tab.save_yaml(config, name, False)
    assert "already exists and was not changed" in message and f"save as walk-{tmp_path.name}-2.yaml" in message
    assert target.read_text() == "# mine\n"
