"""``python -m workbench data check``: validate a dataset file and summarise it."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("data", help="Check a dataset file.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{check}")
    c = dsub.add_parser("check", help="Validate every row and print a summary.")
    c.add_argument("path", help="Dataset file (JSONL or JSON).")
    c.add_argument("--format", default="auto", choices=["auto", "swift", "sharegpt", "messages"],
                   help="Dataset format (default: auto-detect).")
    c.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    c.set_defaults(func=run)


def run(args) -> int:
    from workbench.data.formats import load_samples

    result = load_samples(args.path, args.format)
    problems = [{"row": p.row, "reason": p.reason} for p in result.problems]
    if args.json:
        print(json.dumps({"rows": result.rows, "valid": len(result.samples), "problems": problems, "stats": {}}))
    else:
        print(f"{result.rows} rows, {len(result.samples)} valid, {len(problems)} with problems")
        for p in problems[:50]:
            print(f"  row {p['row']}: {p['reason']}")
    return 1 if problems else 0
