"""One log file for tracebacks and progress; people see sentences, the log keeps details."""

import logging

from workbench.paths import log_file

_configured = False
QUIET_LIBRARIES = ("bitsandbytes", "kernels")  # kernels: the hub kernel package transformers brings


def setup_logging(verbose: bool = False) -> logging.Logger:
    global _configured
    logger = logging.getLogger("workbench")
    if not _configured:
        handler = logging.FileHandler(log_file(), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        # bitsandbytes (and the kernels package it asks) warn through their loggers on import
        # where they find no optional CPU kernel; with no handler of their own that reaches the
        # terminal. It is a detail for the log, not a sentence for people.
        for name in QUIET_LIBRARIES:
            library = logging.getLogger(name)
            library.addHandler(handler)
            library.propagate = False
        _configured = True
    return logger
