"""``python -m workbench infer``: base vs adapter on one prompt, or on held-out rows; or list runs."""

from __future__ import annotations

import json

from workbench.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("infer", help="Compare base and adapter answers (one prompt, or held-out rows).",
                       description="Answer with the base model and with the adapter, same input, same "
                                   "decoding (greedy by default). --runs lists this workbench's runs.")
    p.add_argument("--runs", action="store_true", help="List this workbench's runs (newest first, with state "
                   "and final loss) and exit.")
    p.add_argument("--adapter", help="Adapter folder: a run folder or a checkpoint (default: the newest run "
                   "that holds an adapter).")
    p.add_argument("--base", help="Base model (default: the one the adapter was trained on). Change it only "
                   "when that model moved; an adapter for another model is refused.")
    p.add_argument("--prompt", help="Question to ask (with --image or --video: about that image or video).")
    p.add_argument("--image", help="Image file for the prompt.")
    p.add_argument("--video", help="Video file for the prompt (mp4, webm, mov, ...; frames sampled with the run's "
                   "data.video_* settings). Not with --image.")
    p.add_argument("--system", help="Optional system prompt.")
    p.add_argument("--dataset", help="Held-out check: score base and adapter on this dataset's rows "
                   "('demo': the demo's held-out rows; 'demo-video': the video demo's).")
    p.add_argument("--merged", help="Held-out check: also answer with this merged export of the adapter (export "
                   "--merge) and say how often it agrees with the adapter.")
    p.add_argument("--allow-private-urls", action="store_true", help="Held-out check: also fetch image URLs on "
                   "this machine or its private network (off by default so a dataset cannot probe your network).")
    p.add_argument("--limit", type=int, default=50, help="Held-out check: at most N rows (default 50).")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Longest answer in tokens (default 32).")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default); >0 samples.")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling when temperature > 0.")
    p.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    p.set_defaults(func=run)


def print_runs(as_json: bool) -> int:
    from workbench.paths import runs_root
    from workbench.runs import list_runs

    runs = list_runs()
    if as_json:
        print(json.dumps([r.to_dict() for r in runs]))
    elif not runs:
        print(f"No runs yet in {runs_root()}: train one with `python -m workbench train`.")
    else:
        for r in runs:
            print(f"{r.label()}  {r.path}")
    return 0


def pick_adapter(path: str | None) -> str:
    from workbench.runs import list_runs, usable_adapter

    if path:
        return usable_adapter(path)
    ready = [r for r in list_runs() if r.adapter_dir and r.state != "training"]
    if not ready:
        raise UserError("No finished run to compare with: pass --adapter DIR or train one with `python -m workbench train`.")
    return ready[0].adapter_dir


def run(args) -> int:
    from workbench.inference import Decoding, adapter_base, heldout_check, heldout_rows, prompt_sample
    from workbench.session import Workbench

    if args.runs:
        return print_runs(args.json)
    if not args.prompt and not args.dataset:
        raise UserError("Give --prompt TEXT (with optional --image or --video) or --dataset PATH for a held-out check.")
    decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p)
    decoding.generate_kwargs()  # validate before loading anything
    adapter = pick_adapter(args.adapter)
    trained_on, run_config = adapter_base(adapter)
    base = args.base or trained_on
    if not base:
        raise UserError("The adapter does not say which base model it was trained on: pass --base.")
    if args.dataset:
        from workbench.demo_video import demo_dataset_file

        dataset = None if args.dataset == "demo" else demo_dataset_file(args.dataset, "heldout")
        samples, skipped = heldout_rows(dataset, args.limit, base, args.allow_private_urls, run_config)
        with Workbench().inference(base, adapter, run_config) as comparer:
            result = heldout_check(comparer, samples, decoding, skipped)
            if args.merged:
                from workbench.merged_check import add_merged

                add_merged(result, samples, args.merged, comparer, decoding)
        result["adapter_dir"] = adapter
        if args.json:
            print(json.dumps(result))
        else:
            for r in result["rows"]:
                print(f"row {r['row']}: expected {r['expected']!r} | base {r['base']!r} | adapter {r['adapter']!r}")
            for p in result["problems"]:
                print(f"row {p['row']}: skipped: {p['reason']}")
            print(f"exact-match accuracy: base {result['base_accuracy']:.3f}, adapter {result['adapter_accuracy']:.3f}; "
                  f"normalised: base {result['base_accuracy_normalised']:.3f}, "
                  f"adapter {result['adapter_accuracy_normalised']:.3f} ({len(result['rows'])} rows); "
                  f"{result['metric']}: base {result['base_score']:.3f}, adapter {result['adapter_score']:.3f}")
            if args.merged:
                print(f"merged export: accuracy {result['merged_accuracy']:.3f}, {result['metric']} "
                      f"{result['merged_score']:.3f}; the same answer as the adapter on "
                      f"{result['merged_agrees_with_adapter']:.0%} of the rows")
        return 0
    sample = prompt_sample(args.prompt, args.image, args.system, args.video)
    with Workbench().inference(base, adapter, run_config) as comparer:
        result = comparer.compare(sample, decoding)
    result["adapter_dir"] = adapter
    if args.json:
        print(json.dumps(result))
    else:
        for side in ("base", "adapter"):
            a = result[side]
            print(f"[{side}]{' ' * (8 - len(side))}{a['text']}   ({a['tokens_per_s']:.1f} tokens/s)")
    return 0
