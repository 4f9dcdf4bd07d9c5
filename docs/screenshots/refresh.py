"""Refresh docs/screenshots/*.png: run the browser walk with its screenshots written here.

    python docs/screenshots/refresh.py

Needs /usr/bin/chromium (Debian's package; .ci/run installs it). The walk trains the demo for
a few steps, so this takes a minute or two on a CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main() -> int:
    env = {**os.environ, "WORKBENCH_SCREENSHOTS": str(HERE)}
    command = [sys.executable, "-m", "pytest", "-q", "-x", str(ROOT / "tests" / "test_browser.py")]
    result = subprocess.run(command, cwd=ROOT, env=env)
    if result.returncode == 0:
        print("\n".join(sorted(str(p.relative_to(ROOT)) for p in HERE.glob("*.png"))))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
