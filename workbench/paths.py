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


def build_once(root: Path, version: str, write) -> None:
    """Make the folder ``root`` once, atomically: ``write(staging)`` fills a hidden folder beside it,
    which is renamed into place with a COMPLETE marker, so a half-built folder is never used and two
    processes building at once both end with one whole copy."""
    import shutil
    import tempfile

    if (root / "COMPLETE").exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".building-{root.name}-", dir=root.parent))
    try:
        write(staging)
        (staging / "COMPLETE").write_text(version)
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first; theirs is as good as ours
            if not (root / "COMPLETE").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def fsync_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
