import pytest

from workbench.errors import UserError
from workbench.settings import RunConfig, field_help


def test_yaml_round_trip(tmp_path):
    config = RunConfig().replace(lora={"rank": 32, "target_modules": ["q_proj", "v_proj"]},
                                 training={"learning_rate": 5e-5}, model={"device_map": {"": "cpu"}})
    path = config.save(tmp_path / "run.yaml")
    assert RunConfig.load(path) == config


@pytest.mark.parametrize("section, values, words", [
    ("lora", {"rank": 0}, "lora.rank"),
    ("lora", {"rank": "eight"}, "lora.rank"),
    ("lora", {"dropout": 1.5}, "lora.dropout"),
    ("lora", {"target_modules": "everything"}, "lora.target_modules"),
    ("training", {"learning_rate": -1}, "training.learning_rate"),
    ("training", {"max_steps": 0}, "training.max_steps"),
    ("data", {"min_pixels": 10**7, "max_pixels": 3136}, "data.min_pixels"),
    ("data", {"format": "csv"}, "data.format"),
    ("training", {"per_device_train_batch_size": True}, "training.per_device_train_batch_size"),
])
def test_validation_names_the_field(section, values, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        RunConfig().replace(**{section: values})


def test_unknown_fields_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="Unknown field 'lora.rnak'"):
        RunConfig.from_dict({"lora": {"rnak": 8}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed\n")
    with pytest.raises(UserError, match="not readable YAML"):
        RunConfig.load(bad)
    with pytest.raises(UserError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.yaml")


def test_every_field_has_help():
    import dataclasses

    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory):
            assert len(field_help(section.name, f.name)) > 20, f"{section.name}.{f.name}"
