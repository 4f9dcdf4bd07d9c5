"""One log file for tracebacks and progress; people see sentences, the log keeps details."""

import logging

from workbench.paths import log_file

_configured = False
QUIET_LIBRARIES = ("bitsandbytes",)


def setup_logging(verbose: bool = False) -> logging.Logger:
    global _configured
    logger = logging.getLogger("workbench")
    if not _configured:
        handler = logging.FileHandler(log_file(), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        # bitsandbytes warns through its logger on import where it finds no optional CPU
        # kernel package; with no handler of its own that reaches the terminal. It is a
        # detail for the log, not a sentence for people.
        for name in QUIET_LIBRARIES:
            library = logging.getLogger(name)
            library.addHandler(handler)
            library.propagate = False
        _configured = True
    return logger
