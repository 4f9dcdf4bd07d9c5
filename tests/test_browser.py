"""The demo walked in a real browser (Debian's chromium, driven by Playwright), tab by tab.

Dataset (a thumbnail) -> Memory planner (the per-GPU chart) -> LoRA (few steps) -> Training
(loss points, then finished) -> Inference (two different answers, held-out accuracy table).
Screenshots at 1280x800 go to $WORKBENCH_SCREENSHOTS (default test-artifacts/screenshots);
``python docs/screenshots/refresh.py`` points it at docs/screenshots.
"""

import os
import re
from pathlib import Path

import pytest

from browser_helpers import SECOND, chromium, needs_chromium, new_page, open_tab, served_app

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
WALK_STEPS = 60  # enough for the demo adapter to answer differently from the base
EVAL_STEPS = 20  # evaluation (and a checkpoint) every 20 steps: rows at 0, 20, 40, 60

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app_url(demo):
    with served_app() as app:
        yield app.local_url


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield new_page(browser, app_url)


def shoot(page, name: str, locator=None) -> None:
    if locator is not None:  # that part of the tab at the top of the 1280x800 view
        locator.first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_walk_the_demo_across_all_tabs(page):
    from playwright.sync_api import expect

    # 1. Dataset: the demo's rows with a thumbnail.
    panel = open_tab(page, "Dataset")
    expect(panel.locator("img:not([src$='.svg'])").first).to_be_visible(timeout=120 * SECOND)
    shoot(page, "1-dataset")

    # 2. Memory planner: plan and see the per-GPU chart.
    # The seed question: Qwen2-VL-72B, LoRA r8, batch 1, checkpointing, 4 x 40 GiB.
    panel = open_tab(page, "Memory planner")
    for field, value in (("model", "qwen2-vl-72b-instruct"), ("gpus", "4x40GiB"), ("rank", "8"), ("batch", "1"),
                         ("max-length", "2048"), ("max-pixels", "1003520")):
        page.locator(f"#planner-{field} input, #planner-{field} textarea").first.fill(value)
    page.locator("#planner-checkpointing input").first.check()
    panel.get_by_role("button", name="Plan", exact=True).click()
    expect(panel).to_contain_text("Fits:", timeout=120 * SECOND)
    expect(panel).to_contain_text("max_length 2048")
    chart = panel.locator(".vega-embed, canvas, svg.marks").first
    expect(chart).to_be_visible(timeout=120 * SECOND)
    expect(panel).to_contain_text(re.compile("cuda:3", re.I))
    page.wait_for_timeout(2 * SECOND)  # the chart's redraw
    shoot(page, "2-planner", panel.get_by_text("Fits:"))

    # 3. LoRA: few steps so the walk trains in under a minute.
    panel = open_tab(page, "LoRA")
    steps = panel.get_by_label(re.compile(r"max.?steps", re.I)).first
    steps.fill(str(WALK_STEPS))
    steps.press("Tab")
    panel.get_by_text("Advanced", exact=True).first.click()
    for field in ("eval-steps", "save-steps"):  # a score for each checkpoint
        box = panel.locator(f"#lora-training-{field} input").first
        box.fill(str(EVAL_STEPS))
        box.press("Tab")
    shoot(page, "3-lora")

    # 4. Training: Start, loss points appear, the run finishes.
    panel = open_tab(page, "Training")
    panel.get_by_role("button", name=re.compile(r"^start", re.I)).first.click()
    expect(panel).to_contain_text(re.compile(rf"step [1-9]\d*/{WALK_STEPS}"), timeout=180 * SECOND)
    expect(panel.locator(".vega-embed, canvas, svg.marks").first).to_be_visible()
    expect(panel).to_contain_text(re.compile(rf"Finished {WALK_STEPS} steps"), timeout=240 * SECOND)
    # evaluation during training: the score plot beside the loss, each checkpoint with its score, the best marked
    checkpoints = page.locator("#training-checkpoints")
    expect(checkpoints).to_contain_text(f"checkpoint-{WALK_STEPS}", timeout=30 * SECOND)
    expect(checkpoints).to_contain_text(f"checkpoint-{EVAL_STEPS}")
    expect(checkpoints).to_contain_text("★ best")
    shoot(page, "4-training")

    # 5. Inference: the finished run is listed without a restart; two different answers; held-out table.
    panel = open_tab(page, "Inference")
    expect(page.locator("#inference-run input")).to_have_value(re.compile(r"finished"), timeout=30 * SECOND)
    adapter = page.locator("#adapter-folder input, #adapter-folder textarea").first
    expect(adapter).to_have_value(re.compile(r"runs/.+"), timeout=30 * SECOND)
    page.get_by_role("button", name="Ask base and adapter").click()
    base_box = page.locator("#base-answer textarea")
    adapter_box = page.locator("#adapter-answer textarea")
    expect(adapter_box).not_to_have_value("", timeout=120 * SECOND)
    expect(base_box).not_to_have_value("")
    assert base_box.input_value() != adapter_box.input_value()
    expect(page.locator("#base-speed")).to_contain_text("tokens/s")
    expect(page.locator("#adapter-speed")).to_contain_text("tokens/s")
    shoot(page, "5-inference", page.locator("#inference-run"))

    rows = page.locator("#heldout-rows input")
    rows.fill("6")
    page.get_by_role("button", name="Run held-out check").click()
    accuracy = page.locator("#heldout-accuracy")
    expect(accuracy).to_contain_text("6 held-out rows", timeout=180 * SECOND)
    expect(accuracy).to_contain_text("Exact match")
    table = page.locator("#heldout-table")
    expect(table.locator('img[src^="data:image/png"]:visible').first).to_be_visible()
    assert table.locator('img[src^="data:image/png"]').count() >= 6
    adapter_share = re.search(r"adapter\s*(\d+)%", accuracy.inner_text())
    assert adapter_share, accuracy.inner_text()
    expect(table).to_contain_text("✓" if adapter_share.group(1) != "0" else "✗")
    shoot(page, "6-heldout", page.locator("#heldout-accuracy"))

    # 7. Export: the finished run merged into the base, written with a progress bar; the folder is named.
    panel = open_tab(page, "Export")
    expect(page.locator("#export-run input")).to_have_value(re.compile(r"finished"), timeout=30 * SECOND)
    page.get_by_label(re.compile(r"Merged model")).check()
    page.get_by_role("button", name="Check size and disk").click()
    status = page.locator("#export-status")
    expect(status).to_contain_text("free on that disk", timeout=60 * SECOND)
    page.locator("#export-button").click()
    expect(status).to_contain_text("Exported", timeout=120 * SECOND)
    folder = re.search(r"Exported to (\S+?)\.?\s", status.inner_text() + " ").group(1)
    assert (Path(folder) / "config.json").is_file() and (Path(folder) / "README.md").is_file()
    shoot(page, "7-export")
    page.locator("#export-button").click()  # twice: the folder now holds files, nothing is overwritten
    expect(status).to_contain_text("already holds files", timeout=60 * SECOND)
