"""Datasets: peer formats -> one ``Sample`` type; validation; collation; length statistics."""

from workbench.data.sample import IMAGE_TAG, VIDEO_TAG, Sample, Turn

__all__ = ["IMAGE_TAG", "VIDEO_TAG", "Sample", "Turn"]
