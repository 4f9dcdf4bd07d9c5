"""The demo's one-thread rule holds while a tiny model trains or answers, and never outlives it in
the app process (it used to stay at 1 thread for good after the first demo run or answer)."""

import torch

from workbench.training import JobState, TrainingJob
from workbench.training.loading import tiny_model_threads


def test_tiny_model_threads_gives_the_count_back():
    tiny = torch.nn.Linear(4, 4)
    torch.set_num_threads(2)
    with tiny_model_threads(tiny):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    big = torch.nn.Linear(8000, 8000)  # 64M parameters: not a tiny model
    with tiny_model_threads(big):
        assert torch.get_num_threads() == 2


def test_a_demo_run_leaves_the_thread_count_as_it_found_it(demo, demo_config, tmp_path, monkeypatch):
    import workbench.training.job as job_module

    during = []
    real = job_module.trainer_class

    def recording():
        cls = real()

        class Recording(cls):
            def training_step(self, *args, **kwargs):
                during.append(torch.get_num_threads())
                return super().training_step(*args, **kwargs)

        return Recording

    monkeypatch.setattr(job_module, "trainer_class", recording)
    torch.set_num_threads(2)
    config = demo_config.replace(training={"max_steps": 2, "save_steps": 0, "output_dir": str(tmp_path / "run")})
    assert TrainingJob(config).run() == JobState.FINISHED
    assert during == [1, 1]
    assert torch.get_num_threads() == 2
