"""One way for tests to wait on something that happens in another thread or process."""

import subprocess
import time


def wait_for(predicate, timeout: float = 300.0, proc: subprocess.Popen | None = None, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true; fail after ``timeout`` s, or at once when ``proc`` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            error = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run ended early: {error}")
        time.sleep(interval)
    raise AssertionError("timed out")
