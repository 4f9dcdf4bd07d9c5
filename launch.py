"""Start the workbench: ``python launch.py`` (the embedded demo, on http://127.0.0.1:7860)."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Qwen2-VL LoRA workbench (Gradio app).")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind. Default loopback only; "
                   "another address exposes the app to the network (use --auth then).")
    p.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860).")
    p.add_argument("--model", default="demo", help="Base model: 'demo' (default, embedded tiny "
                   "Qwen2-VL), a preset, a local folder or a hub id already downloaded.")
    p.add_argument("--dataset", default="", help="Dataset file to open (default: the demo's).")
    p.add_argument("--auth-file", help="File with one 'user:password' per line; protects the app.")
    p.add_argument("--auth-env", default="WORKBENCH_AUTH", help="Environment variable holding "
                   "'user:password' (default WORKBENCH_AUTH), read when set.")
    p.add_argument("--max-file-size", default="200mb", help="Largest upload (default 200mb).")
    p.add_argument("--share", action="store_true", help="Create a public Gradio share link (off by default).")
    return p.parse_args(argv)


def read_auth(args) -> list[tuple[str, str]] | None:
    lines = []
    if args.auth_file:
        try:
            with open(args.auth_file, encoding="utf-8") as f:
                lines += f.read().splitlines()
        except OSError as exc:
            sys.exit(f"error: cannot read --auth-file {args.auth_file} ({exc.strerror}): check the path.")
    if os.environ.get(args.auth_env):
        lines.append(os.environ[args.auth_env])
    pairs = []
    for line in lines:
        if line.strip():
            user, sep, password = line.strip().partition(":")
            if not sep or not user or not password:
                sys.exit("error: credentials must be 'user:password', one pair per line.")
            pairs.append((user, password))
    return pairs or None


def main(argv=None):
    args = parse_args(argv)
    from workbench.logs import setup_logging
    from workbench.paths import home
    from workbench.ui.app import build_app
    from workbench.ui.state import LaunchOptions

    setup_logging()
    auth = read_auth(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        print(f"warning: binding {args.host} without --auth: anyone who can reach this port can use the app.",
              file=sys.stderr)
    app = build_app(LaunchOptions(model=args.model, dataset=args.dataset, max_file_size=args.max_file_size))
    allowed = [str(home())]
    if args.dataset:
        allowed.append(os.path.dirname(os.path.abspath(args.dataset)))
    app.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        max_file_size=args.max_file_size, allowed_paths=allowed, footer_links=["gradio"],
    )


if __name__ == "__main__":
    main()
