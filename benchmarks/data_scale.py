"""Data layer at scale: check + stats of a 100k-row JSONL, and a preview page turn.

    python benchmarks/data_scale.py [--rows 100000] [--images 500] [--model demo] [--forms paths|mixed]

Writes the file and its images into a temporary folder (real PNGs of several sizes, reused
across rows, varied text), then times: imports, check_dataset (parse + image headers +
token counts + stats), building the preview table, and turning to a far page (first time,
thumbnails made; second time, cached). Prints one JSON line (seconds).
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the quick brown fox jumps over a lazy dog what color is shape circle square triangle red green "
         "blue picture describe left right top bottom how many objects are there in image answer").split()


def write_dataset(folder: Path, rows: int, images: int, forms: str = "paths") -> Path:
    """``forms`` mixed: one row in ten names its images by base64 data URI, one in ten by file:// URI."""
    import base64

    from PIL import Image

    rng = random.Random(0)
    (folder / "img").mkdir(parents=True)
    sizes = [(56, 56), (84, 56), (224, 168), (448, 336), (640, 480), (1024, 768)]
    for i in range(images):
        w, h = sizes[i % len(sizes)]
        Image.new("RGB", (w, h), (i % 255, 80, 160)).save(folder / "img" / f"{i}.png")
    inline = {}
    if forms == "mixed":
        inline = {i: "data:image/png;base64," + base64.b64encode((folder / "img" / f"{i}.png").read_bytes()).decode()
                  for i in range(images)}
    path = folder / "big.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for r in range(rows):
            n = 1 if r % 10 else 2
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
            chosen = [rng.randrange(images) for _ in range(n)]
            if inline and r % 10 == 0:
                refs = [inline[i] for i in chosen]
            elif inline and r % 10 == 1:
                refs = [f"file://{folder / 'img' / f'{i}.png'}" for i in chosen]
            else:
                refs = [f"img/{i}.png" for i in chosen]
            record = {"messages": [{"role": "user", "content": "<image>" * n + question},
                                   {"role": "assistant", "content": answer}], "images": refs}
            out.write(json.dumps(record) + "\n")
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="Rows in the generated file.")
    p.add_argument("--images", type=int, default=500, help="Distinct image files reused across rows.")
    p.add_argument("--model", default="demo", help="Whose tokenizer counts text tokens and whose context bounds a row "
                   "('demo' or a local folder).")
    p.add_argument("--forms", choices=["paths", "mixed"], default="paths",
                   help="paths: relative image paths (the common case); mixed: also data URIs and file:// URIs.")
    args = p.parse_args()
    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="bench-home-"))
    folder = Path(tempfile.mkdtemp(prefix="data-scale-"))
    path = write_dataset(folder, args.rows, args.images, args.forms)

    t = time.perf_counter()
    from workbench.data.preview import preview_page, rows_table
    from workbench.data.stats import load_tokenizer, model_context
    from workbench.data.validation import check_dataset

    import qwen_vl_utils  # noqa: F401  (imports torch and torchvision: counted here, not in the check)
    tokenizer = load_tokenizer(args.model)
    context = model_context(args.model)
    imports = time.perf_counter() - t

    t, cpu = time.perf_counter(), time.process_time()
    report = check_dataset(path, max_length=2048, min_pixels=3136, max_pixels=1003520, tokenizer=tokenizer,
                           context=context, model=args.model)
    check, check_cpu = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()
    table = rows_table(report)
    table_build = time.perf_counter() - t
    far = len(table) // 20 - 3
    t = time.perf_counter()
    preview_page(report, table, far)
    first_turn = time.perf_counter() - t
    t = time.perf_counter()
    preview_page(report, table, far + 1)
    next_turn = time.perf_counter() - t
    t = time.perf_counter()
    preview_page(report, table, far)
    cached_turn = time.perf_counter() - t
    print(json.dumps({
        "rows": report.rows, "forms": args.forms, "valid": report.valid, "unique_images": report.stats["unique_images"],
        "file_mb": round(path.stat().st_size / 1e6, 1), "imports_s": round(imports, 2),
        "check_and_stats_s": round(check, 2), "check_and_stats_cpu_s": round(check_cpu, 2), "table_build_s": round(table_build, 2),
        "page_turn_first_s": round(first_turn, 3), "page_turn_next_s": round(next_turn, 3),
        "page_turn_cached_s": round(cached_turn, 3), "p50": report.stats["p50"], "p95": report.stats["p95"],
        "max": report.stats["max"], "text_tokens": report.stats["text_tokens"], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
