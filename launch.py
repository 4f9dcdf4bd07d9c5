"""Start the workbench: ``python launch.py`` (the embedded demo, on http://127.0.0.1:7860).

Safe by default: loopback only, no public share link, analytics off, uploads capped, and
only the thumbnails the app shows served from disk (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_ENV_DEFAULT = "WORKBENCH_AUTH"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Qwen2-VL LoRA workbench (Gradio app). With no flags: the embedded "
                                "demo (tiny model and data) on http://127.0.0.1:7860.")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind. Default loopback only; "
                   "another address (e.g. 0.0.0.0) exposes the app to the network: use --auth then.")
    p.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860); change it when "
                   "7860 is taken.")
    p.add_argument("--model", default="demo", help="Base model: 'demo' (default, embedded tiny "
                   "Qwen2-VL), a preset, a local folder or a hub id already downloaded.")
    p.add_argument("--dataset", default="", help="Dataset file to open (default: the demo's; demo-video: the video "
                   "demo's, with its training settings). Its images "
                   "are shown as thumbnails; its folder is never served to the browser.")
    p.add_argument("--auth", metavar="SOURCE", help="Require a login. SOURCE is a file with one "
                   "'user:password' per line, or env:NAME for an environment variable holding 'user:password'. "
                   f"Never the password itself. Without --auth, ${AUTH_ENV_DEFAULT} is used when set.")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="Also answer requests addressed to NAME (a reverse proxy's name, this machine's LAN name); "
                   "repeat for several. Requests for any other Host are refused (DNS rebinding). Loopback names "
                   "are always answered; bound to 0.0.0.0 without this flag, every Host is (use --auth then).")
    p.add_argument("--max-file-size", default="200mb", help="Largest upload, e.g. 200mb or 2gb (default 200mb).")
    p.add_argument("--share", action="store_true", help="Create a public Gradio share link (off by default; "
                   "anyone with the link can use the app and your GPUs).")
    return p.parse_args(argv)


def parse_credentials(lines: list[str], source: str) -> list[tuple[str, str]]:
    pairs = []
    for line in lines:
        if line.strip():
            user, sep, password = line.strip().partition(":")
            if not sep or not user or not password:
                raise SystemExit(f"error: {source} must hold 'user:password', one pair per line.")
            pairs.append((user, password))
    if not pairs:
        raise SystemExit(f"error: {source} holds no 'user:password' line: add one or drop --auth.")
    return pairs


def read_auth(source: str | None, environ=os.environ) -> list[tuple[str, str]] | None:
    """Credentials from --auth (file or env:NAME), else from $WORKBENCH_AUTH, else none."""
    if source is None:
        value = environ.get(AUTH_ENV_DEFAULT)
        return parse_credentials([value], f"${AUTH_ENV_DEFAULT}") if value else None
    if source.startswith("env:"):
        name = source[4:]
        if not environ.get(name):
            raise SystemExit(f"error: --auth {source}: the environment variable {name} is not set: export "
                             f"{name}='user:password' first.")
        return parse_credentials([environ[name]], f"${name}")
    path = Path(source).expanduser()
    if not path.is_file():
        if ":" in source:
            raise SystemExit("error: --auth takes a file or env:NAME, not the credentials themselves (they would "
                             f"show in the process list): put them in a file or in ${AUTH_ENV_DEFAULT}.")
        raise SystemExit(f"error: --auth file {path} does not exist: check the path.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: cannot read --auth file {path} ({exc}): check its permissions.") from None
    return parse_credentials(lines, f"--auth file {path}")


def allowed_folders() -> list[str]:
    """What the browser may fetch from disk: the thumbnails the app made to show, nothing else.

    Not the dataset's folder (``--dataset ~/train.jsonl`` would serve the home folder) nor the
    workbench home (its log, runs, unpacked uploads)."""
    from workbench.data.preview import shown_folders

    folders = shown_folders()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return [str(folder) for folder in folders]


def make_app(args):
    """The Blocks app and the keyword arguments for ``launch`` (separate so tests can check both)."""
    from starlette.middleware import Middleware

    from workbench.ui.app import build_app
    from workbench.ui.app import LaunchOptions
    from workbench.ui.hosts import HostCheck, allowed_hosts

    from workbench.demo_video import is_demo_dataset

    if args.dataset and not is_demo_dataset(args.dataset) and not Path(args.dataset).expanduser().is_file():
        raise SystemExit(f"error: --dataset {args.dataset} is not a file: pass a .jsonl or .json dataset file.")
    auth = read_auth(args.auth)
    if args.host not in LOOPBACK and not auth:
        print(f"warning: binding {args.host} without --auth: anyone who can reach this port can use the app.",
              file=sys.stderr)
    app = build_app(LaunchOptions(model=args.model, dataset=args.dataset, max_file_size=args.max_file_size))
    app.queue(default_concurrency_limit=4)
    hosts = None if args.share else allowed_hosts(args.host, args.allowed_host)  # a share link has its own name
    app_kwargs = {"middleware": [Middleware(HostCheck, allowed=hosts)]} if hosts else {}
    kwargs = dict(server_name=args.host, server_port=args.port, share=args.share, auth=auth, app_kwargs=app_kwargs,
                  max_file_size=args.max_file_size, allowed_paths=allowed_folders(),
                  footer_links=["gradio"], ssr_mode=False, enable_monitoring=False, mcp_server=False)
    return app, kwargs


def main(argv=None):
    args = parse_args(argv)
    from workbench.logs import setup_logging

    setup_logging()
    app, kwargs = make_app(args)
    app.launch(**kwargs)


if __name__ == "__main__":
    main()
