"""The Memory planner tab alone in a real browser (Debian's chromium via Playwright), 1280x800.

Typed at 30 ms per key as a person would: a plan that does not fit shows every column of its
suggestions; choosing a strategy row redraws the per-GPU table; "Use this plan" answers.
"""

from contextlib import contextmanager
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM, SECOND, chromium, free_port, new_page

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does).")


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:  # one per module: Playwright's sync API does not nest
        yield browser


@contextmanager
def planner_page(browser, config: dict):
    """The Memory planner tab alone, served with ``config`` as the run's settings, in a 1280x800 page."""
    import gradio as gr

    from workbench.session import Workbench
    from workbench.ui import planner_tab
    from workbench.ui.app import LaunchOptions, TabContext

    with gr.Blocks() as app:
        ctx = TabContext(options=LaunchOptions(), session=Workbench(), config=gr.State(config))
        with gr.Tab("Memory planner"):
            planner_tab.build(ctx)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    page = new_page(browser, app.local_url)
    try:
        yield page
    finally:
        page.close()
        app.close()


@pytest.fixture(scope="module")
def page(browser):
    from workbench.settings import RunConfig

    with planner_page(browser, RunConfig().to_dict()) as page:
        yield page


def type_into(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill("")
    box.press_sequentially(text, delay=30)


def test_plan_that_does_not_fit_shows_all_suggestion_columns_and_rows_redraw(page):
    from playwright.sync_api import expect

    type_into(page, "planner-model", "qwen2-vl-72b-instruct")
    type_into(page, "planner-gpus", "3x40GiB")
    page.get_by_role("button", name="Plan", exact=True).click()
    expect(page.get_by_text("Does not fit:").first).to_be_visible(timeout=120 * SECOND)
    expect(page.locator("body")).to_contain_text("layers.64-79, norm, lm_head fit on none of the 3 GPUs")

    suggestions = page.locator("#planner-suggestions")
    expect(suggestions).to_contain_text("4-bit")
    suggestions.scroll_into_view_if_needed()
    # Every header lies inside the table's visible frame (no column scrolled out of view).
    headers = suggestions.evaluate("""e => {
        const frame = e.querySelector('table').parentElement.getBoundingClientRect();
        return [...e.querySelectorAll('th')].map(th => {
            const b = th.getBoundingClientRect();
            return [th.innerText.trim(), b.left >= frame.left - 1 && b.right <= frame.right + 1];
        });
    }""")
    shown = {text.split("\n")[0]: inside for text, inside in headers if text}
    assert shown == {"fits": True, "saves GiB": True, "peak GPU GiB": True, "change": True}, shown

    # Choosing the fsdp row shows fsdp's GPUs: the gathered layers appear in the per-GPU table.
    page.locator("#planner-strategies").get_by_text("fsdp", exact=True).first.click()
    expect(page.locator("body")).to_contain_text("Showing fsdp")
    expect(page.locator("body")).to_contain_text("gathered/buckets")

    page.locator("#planner-use").click()
    expect(page.locator("body")).to_contain_text("Not applied: this plan does not fit with fsdp")


@pytest.fixture(scope="module")
def demo_page(browser):
    """The tab as the demo's app starts it on a machine without a GPU (issue 25's walk)."""
    from workbench.demo import DEMO_TRAINING
    from workbench.hardware import detect_gpus
    from workbench.settings import RunConfig

    if detect_gpus():
        pytest.skip("this machine has a GPU")
    with planner_page(browser, RunConfig.from_dict(DEMO_TRAINING).to_dict()) as page:
        yield page


@pytest.mark.slow  # a browser of its own: about 50 s on 2 cores
def test_use_this_plan_without_a_gpu_plans_the_cpu_and_keeps_the_demo_settings(demo_page):
    from playwright.sync_api import expect

    page = demo_page
    expect(page.locator("#planner-gpus textarea, #planner-gpus input").first).to_have_value("cpu")
    page.get_by_role("button", name="Plan", exact=True).click()
    expect(page.get_by_text("Fits:").first).to_be_visible(timeout=120 * SECOND)
    page.locator("#planner-use").click()
    expect(page.locator("body")).to_contain_text(
        "Applied: demo, one process on this machine's CPU, LoRA r16, batch 8, max_length 256, max_pixels 12544")
