"""A run's metrics.jsonl read back: whole (``read_metrics``) or incrementally as it grows (``MetricsTail``).

Rows are JSON objects one a line; a torn last line (a kill mid-write) is skipped, never an error.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsTail:
    """The rows of a metrics file, read incrementally: each ``rows()`` reads only what was appended.

    A file that shrank (a resume truncates it to its checkpoint) is read again from the start.
    """

    def __init__(self, path: Path):
        self.path = path
        self._rows: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()

    def rows(self) -> list[dict]:
        with self._lock:
            try:
                size = self.path.stat().st_size
            except OSError:
                return list(self._rows)
            if size < self._offset:
                self._rows, self._offset = [], 0
            if size > self._offset:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read(size - self._offset)
                complete = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next read
                for line in chunk[:complete].decode("utf-8", errors="replace").splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        self._rows.append(row)
                self._offset += complete
            return list(self._rows)


