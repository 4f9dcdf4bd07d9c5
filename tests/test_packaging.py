"""The wheel built from pyproject.toml carries the package data (chat templates, presets' configs),
and an installed (not editable) workbench reads them: a wheel works like a checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to pyproject.toml.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "workbench", src / "workbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=120)
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_every_template_and_model_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = ROOT / "workbench" / "assets"
    expected = {p.relative_to(ROOT).as_posix() for p in assets.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {"workbench/assets/templates/qwen2_vl.jinja", "workbench/assets/templates/qwen3_vl.jinja",
            "workbench/assets/models/qwen2-vl-72b-instruct.json"} <= expected
    assert len([n for n in expected if n.endswith(".json")]) == 11  # the presets in workbench/models/presets.py
    assert expected <= names, sorted(expected - names)


def test_an_installed_wheel_reads_its_templates_and_plans_a_preset(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    code = ("import workbench, sys\n"
            "from workbench.models.families import FAMILIES\n"
            "from workbench.models.config import load_model_config\n"
            "print(workbench.__file__)\n"
            "print(all('<|im_start|>' in f.template_text for f in FAMILIES.values()))\n"
            "print(load_model_config('qwen2-vl-72b-instruct').text_config.num_hidden_layers)\n")
    # Run outside the checkout with only the installed copy first on the path (the dependencies come
    # from this interpreter's site-packages).
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    where, templates, layers = out.stdout.split()
    assert Path(where).is_relative_to(site)
    assert templates == "True"
    assert layers == "80"  # Qwen2-VL-72B's config.json


def test_an_installed_wheel_plans_72b_and_trains_the_demo(wheel, tmp_path):
    import json

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(site), "WORKBENCH_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    plan = subprocess.run([sys.executable, "-m", "workbench", "plan", "--model", "qwen2-vl-72b-instruct", "--gpus",
                           "4xA800-40GB", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert json.loads(plan.stdout.splitlines()[-1])["strategy"] == "device_map"
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "workbench", "train", "--max-steps", "2", "--output-dir", str(run)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (run / "adapter_model.safetensors").is_file() and "Traceback" not in train.stderr
