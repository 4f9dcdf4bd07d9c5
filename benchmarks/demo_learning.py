"""Does the embedded demo learn? Train with the demo defaults, score base vs adapter.

Builds the demo (if needed), trains a LoRA adapter with ``DEMO_TRAINING`` through the
workbench's own job, then scores exact-match accuracy of the base model (adapter
disabled) and of the adapter on the held-out demo rows. Last line: one JSON object
{"model", "base_accuracy", "adapter_accuracy", "train_seconds", "steps"}.

    python benchmarks/demo_learning.py [--model demo|demo-qwen2.5-vl|demo-qwen3-vl] [--max-steps N] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="Which demo: demo (Qwen2-VL), demo-qwen2.5-vl, demo-qwen3-vl.")
    parser.add_argument("--max-steps", type=int, help="Override the demo's max_steps.")
    parser.add_argument("--output-dir", help="Run folder (default: a new temporary folder).")
    parser.add_argument("--quantization", default="none", choices=["none", "nf4", "int8"],
                        help="Quantise the base while training (QLoRA with nf4).")
    args = parser.parse_args(argv)

    from workbench.data.formats import load_samples
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.inference import Comparer, heldout_check
    from workbench.settings import RunConfig
    from workbench.training import JobState, TrainingJob

    paths = ensure_demo(name=args.model)
    config = RunConfig.from_dict(DEMO_TRAINING).replace(model={"name_or_path": args.model})
    output = args.output_dir or str(Path(tempfile.mkdtemp(prefix="demo-learning-")) / "run")
    overrides = {"output_dir": output}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    config = config.replace(training=overrides, model={"quantization": args.quantization})

    job = TrainingJob(config)
    start = time.perf_counter()
    state = job.run()
    train_seconds = time.perf_counter() - start
    if state != JobState.FINISHED:
        print(f"training did not finish: {job.message}", file=sys.stderr)
        return 1
    samples = load_samples(paths.heldout).samples
    result = heldout_check(Comparer(args.model, job.output_dir, config), samples)
    for row in result["rows"][:5]:
        print(f"expected {row['expected']!r:10} base {row['base'][:30]!r:34} adapter {row['adapter']!r}", file=sys.stderr)
    summary = {"model": args.model, "base_accuracy": result["base_accuracy"],
               "adapter_accuracy": result["adapter_accuracy"], "train_seconds": round(train_seconds, 1),
               "steps": job.step}
    if args.quantization != "none":
        on_trained_base = heldout_check(Comparer(args.model, job.output_dir, config, quantization=args.quantization),
                                        samples)
        same = [a["adapter"] == b["adapter"] for a, b in zip(result["rows"], on_trained_base["rows"])]
        summary.update(quantization=args.quantization, quantized_base_accuracy=on_trained_base["adapter_accuracy"],
                       same_answers=sum(same) / len(same))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
