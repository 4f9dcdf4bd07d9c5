"""What a first-time user tripped on in the browser, kept fixed (Debian's chromium via Playwright).

Gradio's plots keep the colour domain of the first frame they drew, and Gradio's own Number
minimum answers before any handler with a bare "Error" over the outputs: both only show in a page.
"""

import re

import pytest

from test_browser import ARGS, CHROMIUM, SECOND, free_port, open_tab

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")


@pytest.fixture(scope="module")
def page(demo):
    from playwright.sync_api import sync_playwright

    from launch import make_app, parse_args

    app, kwargs = make_app(parse_args(["--port", str(free_port())]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60 * SECOND)
        page.goto(app.local_url)
        yield page
        browser.close()
    app.close()


def legend(page) -> list[str]:
    """The legend of the planner's chart, as drawn."""
    chart = page.locator('[role="tabpanel"]:visible .vega-embed').first
    return chart.evaluate("e => Array.from(e.querySelectorAll('.role-legend-label text')).map(t => t.textContent)")


def test_two_node_fsdp_after_a_device_map_plan_draws_every_term(page):
    from playwright.sync_api import expect

    panel = open_tab(page, "Memory planner")
    for field, value in (("model", "qwen2-vl-72b-instruct"), ("gpus", "4xA800-40GB")):
        page.locator(f"#planner-{field} input, #planner-{field} textarea").first.fill(value)
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
