"""Training: the job (Trainer in a background thread), its bridge to the run folder, faults."""

from workbench.training.job import JobState, TrainingJob

__all__ = ["JobState", "TrainingJob"]
