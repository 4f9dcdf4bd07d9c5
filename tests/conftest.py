"""Shared fixtures: one workbench home per test session, the demo built once, one short run."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Before any workbench import resolves paths: never touch the user's own cache.
    if not os.environ.get("WORKBENCH_TEST_KEEP_HOME"):
        import tempfile

        os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp(prefix="workbench-test-home-")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo():
    from workbench.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def demo_config(demo):
    from workbench.demo import DEMO_TRAINING
    from workbench.settings import RunConfig

    return RunConfig.from_dict(DEMO_TRAINING)


@pytest.fixture(scope="session")
def trained_run(demo_config, tmp_path_factory):
    """A short demo run (enough for the adapter to answer differently from the base)."""
    from workbench.training import JobState, TrainingJob

    out = tmp_path_factory.mktemp("runs") / "short"
    job = TrainingJob(demo_config.replace(training={"max_steps": 40, "save_steps": 20, "output_dir": str(out)}))
    assert job.run() == JobState.FINISHED, job.message
    return job


def run_cli(*args, timeout=300):
    """Run ``python -m workbench ...`` in a subprocess; returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
