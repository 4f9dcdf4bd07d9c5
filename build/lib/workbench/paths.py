"""Where the workbench keeps its own files (demo cache, runs, log).

Everything lives under one folder, ``$WORKBENCH_HOME`` or ``~/.cache/qwen2vl-workbench``,
so the app can serve exactly that folder (plus the user's datasets) and nothing else.
"""

import os
from pathlib import Path


def home() -> Path:
    root = Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "qwen2vl-workbench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_root() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_file() -> Path:
    return home() / "workbench.log"


def configs_root() -> Path:
    """Where the app saves a run's YAML when given a bare file name (never the server's working folder)."""
    path = home() / "configs"
    path.mkdir(parents=True, exist_ok=True)
    return path
