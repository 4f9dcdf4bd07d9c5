"""``python -m workbench infer``: base vs adapter on one prompt, or on held-out rows."""

from __future__ import annotations

import json

from workbench.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("infer", help="Compare base and adapter answers (one prompt, or held-out rows).",
                       description="Answer with the base model and with the adapter, same input, same "
                                   "decoding (greedy by default).")
    p.add_argument("--adapter", required=True, help="Adapter folder: a finished run's folder or a checkpoint.")
    p.add_argument("--base", help="Base model (default: the one the adapter was trained on).")
    p.add_argument("--prompt", help="Question to ask (with --image: about that image).")
    p.add_argument("--image", help="Image file for the prompt.")
    p.add_argument("--system", help="Optional system prompt.")
    p.add_argument("--dataset", help="Held-out check: score base and adapter on this dataset's rows.")
    p.add_argument("--limit", type=int, default=50, help="Held-out check: at most N rows (default 50).")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Longest answer in tokens (default 32).")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default); >0 samples.")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling when temperature > 0.")
    p.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    p.set_defaults(func=run)


def run(args) -> int:
    from workbench.inference import Comparer, Decoding, adapter_base, heldout_check, prompt_sample

    if not args.prompt and not args.dataset:
        raise UserError("Give --prompt TEXT (with optional --image) or --dataset PATH for a held-out check.")
    if args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit}.")
    decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p)
    decoding.generate_kwargs()  # validate before loading anything
    base, run_config = adapter_base(args.adapter)
    base = args.base or base
    if not base:
        raise UserError("The adapter does not say which base model it was trained on: pass --base.")
    if args.dataset:
        from workbench.data.formats import load_samples

        samples = load_samples(args.dataset).samples[: args.limit]
        if not samples:
            raise UserError(f"{args.dataset} has no usable rows for a held-out check.")
        comparer = Comparer(base, args.adapter, run_config)
        result = heldout_check(comparer, samples, decoding)
        if args.json:
            print(json.dumps(result))
        else:
            for r in result["rows"]:
                print(f"row {r['row']}: expected {r['expected']!r} | base {r['base']!r} | adapter {r['adapter']!r}")
            print(f"exact-match accuracy: base {result['base_accuracy']:.3f}, adapter {result['adapter_accuracy']:.3f}")
        return 0
    sample = prompt_sample(args.prompt, args.image, args.system)
    comparer = Comparer(base, args.adapter, run_config)
    result = comparer.compare(sample, decoding)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"[base]    {result['base']['text']}")
        print(f"[adapter] {result['adapter']['text']}")
    return 0
