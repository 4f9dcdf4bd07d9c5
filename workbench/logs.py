"""One log file for tracebacks and progress; people see sentences, the log keeps details."""

import logging

from workbench.paths import log_file

_configured = False


def setup_logging(verbose: bool = False) -> logging.Logger:
    global _configured
    logger = logging.getLogger("workbench")
    if not _configured:
        handler = logging.FileHandler(log_file(), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        _configured = True
    return logger
