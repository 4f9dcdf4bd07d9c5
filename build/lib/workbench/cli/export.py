"""``python -m workbench export``: an adapter ready for serving, or a merged model folder."""

from __future__ import annotations

import json


def register(sub) -> None:
    from workbench.export import DEFAULT_MAX_SHARD, DTYPES

    p = sub.add_parser("export", help="Export a run's adapter, or merge it into the base model.",
                       description="Write a finished run's adapter as a clean folder that loads with "
                                   "PeftModel.from_pretrained, or with --merge a full model folder (base with the "
                                   "LoRA folded in) that loads with AutoModelForImageTextToText.from_pretrained. "
                                   "The merge streams the base shard by shard; the folder appears only when "
                                   "complete.")
    p.add_argument("--adapter", required=True, help="Run folder of a finished run, or one of its checkpoint-N "
                   "folders (an unfinished run is refused with its newest complete checkpoint named).")
    p.add_argument("--out", required=True, help="New or empty folder to write. Nothing existing is overwritten.")
    p.add_argument("--merge", action="store_true", help="Fold the adapter into the base's weights and write a "
                   "full model (needs the base on this machine, and disk for a copy of it).")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="Merged weights' dtype (default auto: as the "
                   "base). bf16 halves an fp32 base; fp32 keeps the merge exact.")
    p.add_argument("--base", help="Base model (default: the one the run trained on). Change it only when that "
                   "model moved; an adapter of another base is refused.")
    p.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD, help=f"Largest merged shard (default "
                   f"{DEFAULT_MAX_SHARD}). The merge holds about one shard in memory: lower it on a small machine.")
    p.add_argument("--check", action="store_true", help="Only check and print what would be written (size, "
                   "free disk, shards); write nothing.")
    p.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    p.set_defaults(func=run)


def run(args) -> int:
    from workbench.export import plan_export, run_export

    plan = plan_export(args.adapter, args.out, merge=args.merge, dtype=args.dtype, base=args.base,
                       max_shard_size=args.max_shard_size)
    if not args.json:
        print(plan.summary(), flush=True)
    if args.check:
        if args.json:
            print(json.dumps(plan.to_dict()))
        return 0

    def progress(fraction: float, message: str) -> None:
        if not args.json and fraction < 1:
            print(f"[{fraction:4.0%}] {message}", flush=True)

    out = run_export(plan, progress)
    if args.json:
        print(json.dumps({**plan.to_dict(), "written": str(out)}))
    else:
        loader = "AutoModelForImageTextToText.from_pretrained" if args.merge else "PeftModel.from_pretrained"
        print(f"Exported to {out} (load it with {loader}).")
    return 0
