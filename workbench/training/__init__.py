"""Training: the job (Trainer in a background thread), its bridge to the app, checkpoints."""

from workbench.training.job import JobBusy, JobState, TrainingJob, current_job, start_job

__all__ = ["JobBusy", "JobState", "TrainingJob", "current_job", "start_job"]
