"""The Qwen2.5-VL and Qwen3-VL demos: built offline, trained briefly through the job, compared
base-vs-adapter through the Inference tab's handlers, planned by the planner."""

import json

import pytest

FAMILY_DEMOS = {"demo-qwen2.5-vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
                "demo-qwen3-vl": ("qwen3_vl", "Qwen3VLForConditionalGeneration")}


@pytest.fixture(scope="module", params=sorted(FAMILY_DEMOS))
def family_run(request, tmp_path_factory):
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig
    from workbench.training import JobState, TrainingJob

    name = request.param
    paths = ensure_demo(name=name)
    out = tmp_path_factory.mktemp("family-runs") / name
    config = RunConfig.from_dict(DEMO_TRAINING).replace(
        model={"name_or_path": name}, training={"max_steps": 60, "save_steps": 0, "output_dir": str(out)})
    job = TrainingJob(config)
    assert job.run() == JobState.FINISHED, job.message
    return name, paths, str(out)


def test_demo_is_its_family_and_trains_on_its_own_rows(family_run):
    name, paths, out = family_run
    model_type, model_class = FAMILY_DEMOS[name]
    config = json.loads((paths.model / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [model_class]
    from workbench.models.families import FAMILIES

    processor = json.loads((paths.model / "processor_config.json").read_text())
    assert processor["processor_class"] == FAMILIES[model_type].processor_class
    assert (paths.model / "chat_template.jinja").read_text() == FAMILIES[model_type].template_text
    losses = [json.loads(line)["loss"] for line in open(f"{out}/metrics.jsonl") if '"loss"' in line]
    assert losses[-1] < losses[0]


def test_inference_tab_compares_base_and_adapter(family_run):
    from workbench.session import Workbench
    from workbench.ui import inference_tab as tab

    name, paths, out = family_run
    session = Workbench()
    image, heldout = tab.default_inputs(name)
    assert image and heldout == str(paths.heldout)
    base_text, _, adapter_text, _, status = tab.ask(session, "", out, image, "", tab.DEFAULT_PROMPT, "", 8, 0, 1)
    assert "⚠️" not in status
    assert base_text == "I do not know." and adapter_text != base_text
    assert session.inference_key == (name, out)  # the base the adapter was trained on, by its demo name


def test_planner_plans_the_demo(family_run):
    from workbench.hardware import parse_gpu_spec
    from workbench.planner import PlanRequest, plan_memory

    name, _, _ = family_run
    plan = plan_memory(PlanRequest(model=name, gpus=parse_gpu_spec("1x24GiB"), max_length=256, max_pixels=112 * 112))
    assert plan.fits and plan.devices[0]["weights_bytes"] > 0
