"""The command line: parser and error handling around the subcommands.

Each subcommand module in this package exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int`` (the exit code).
"""

import argparse
import logging
import sys

from workbench.errors import UserError
from workbench.logs import setup_logging
from workbench.paths import log_file


def build_parser() -> argparse.ArgumentParser:
    from workbench.cli import data, export, infer, launch, plan, train

    parser = argparse.ArgumentParser(
        prog="python -m workbench",
        description="Qwen-VL LoRA workbench (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), headless: check data, plan memory, "
                    "train, compare, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{plan,data,train,launch,infer,export}")
    for module in (plan, data, train, launch, infer, export):
        module.register(sub)
    return parser


def one_line(message: str, limit: int = 500) -> str:
    """A message for people quotes their input, which may be huge or multi-line: keep it one readable line."""
    message = " ".join(message.split())
    if len(message) > limit:
        keep = (limit - 5) // 2
        message = f"{message[:keep]} ... {message[-keep:]}"
    return message


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = setup_logging()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: details go to the log
        logger.exception("unhandled error in %s", args.command)
        print(
            f"error: {type(exc).__name__}: {one_line(str(exc), 300)}. This looks like a bug in the workbench; "
            f"the traceback is in {log_file()}.",
            file=sys.stderr,
        )
        logging.shutdown()
        return 1


if __name__ == "__main__":
    sys.exit(main())
