"""What a first-time user tripped on in the browser, kept fixed (Debian's chromium via Playwright).

Gradio's plots keep the colour domain of the first frame they drew, and Gradio's own Number
minimum answers before any handler with a bare "Error" over the outputs: both only show in a page.
"""

import re

import pytest

from browser_helpers import SECOND, chromium, needs_chromium, new_page, open_tab, served_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(demo):
    with served_app() as app, chromium() as browser:
        yield new_page(browser, app.local_url)


def legend(page) -> list[str]:
    """The legend of the planner's chart, as drawn."""
    chart = page.locator('[role="tabpanel"]:visible .vega-embed').first
    return chart.evaluate("e => Array.from(e.querySelectorAll('.role-legend-label text')).map(t => t.textContent)")


def test_two_node_fsdp_after_a_device_map_plan_draws_every_term(page):
    from playwright.sync_api import expect

    panel = open_tab(page, "Memory planner")
    # the form starts from the run's settings (the demo's: batch 8, no checkpointing); the seed question's are these
    for field, value in (("model", "qwen2-vl-72b-instruct"), ("gpus", "4xA800-40GB"), ("batch", "1"),
                         ("max-length", "2048"), ("max-pixels", "1003520")):
        page.locator(f"#planner-{field} input, #planner-{field} textarea").first.fill(value)
    page.locator("#planner-checkpointing input").first.check()
    plan = panel.get_by_role("button", name="Plan", exact=True)
    plan.click()
    expect(panel).to_contain_text("device_map over 4 GPUs", timeout=120 * SECOND)
    page.locator("#planner-nodes input").fill("2")
    plan.click()
    expect(panel).to_contain_text("fsdp over 8 GPUs in 2 nodes of 4", timeout=120 * SECOND)
    expect(panel.locator(".vega-embed").first).to_contain_text("gathered/buckets", timeout=30 * SECOND)
    labels = legend(page)
    assert labels[0] == "free" and labels[-1] == "weights" and "gathered/buckets" in labels, labels

    page.locator("#planner-rank input").fill("0")  # Gradio's minimum used to answer this with a bare "Error"
    plan.click()
    expect(panel).to_contain_text("Cannot plan: LoRA rank must be at least 1, got 0.", timeout=60 * SECOND)
    expect(panel.locator(".error")).to_have_count(0)


def test_page_zero_on_the_dataset_tab_is_page_one_not_an_error(page):
    from playwright.sync_api import expect

    panel = open_tab(page, "Dataset")
    expect(panel.locator("img:not([src$='.svg'])").first).to_be_visible(timeout=120 * SECOND)
    box = page.get_by_label("Page").first
    box.fill("0")
    box.press("Enter")
    expect(box).to_have_value("1", timeout=30 * SECOND)
    expect(panel.locator(".error")).to_have_count(0)
    expect(panel.get_by_role("gridcell", name=re.compile(r"^1$")).first).to_be_visible()


def test_a_typed_image_path_empties_the_image_box(page):
    # The box kept the demo's picture while the typed path was what the question was about.
    from playwright.sync_api import expect

    panel = open_tab(page, "Inference")
    box = panel.locator("#inference-image")
    expect(box.locator("img").first).to_be_visible(timeout=60 * SECOND)
    panel.locator("#inference-image-path textarea, #inference-image-path input").first.press_sequentially(
        "/data/images/0001.png", delay=30)
    expect(box.locator("img")).to_have_count(0, timeout=30 * SECOND)
