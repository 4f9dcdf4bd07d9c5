"""The app as one session, in a real browser: typing at human speed loses nothing, and a run
survives edits and a Start pressed in a second browser tab."""

import re

import pytest
import yaml

from browser_helpers import SECOND, chromium, needs_chromium, new_page, open_tab, served_app

pytestmark = needs_chromium
KEY_DELAY_MS = 30  # a fast typist


@pytest.fixture(scope="module")
def app_url(demo):
    with served_app() as app:
        yield app.local_url


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def field(page, key: str):
    """The input of the LoRA form's field ``section.name``."""
    elem = "lora-" + key.replace(".", "-").replace("_", "-")
    return page.locator(f"#{elem} input, #{elem} textarea").first


def type_into(page, key: str, text: str) -> None:
    box = field(page, key)
    box.click()
    box.press("Control+A")
    box.press("Backspace")
    box.press_sequentially(text, delay=KEY_DELAY_MS)


def test_typing_at_human_speed_reaches_the_saved_yaml(browser, app_url, tmp_path):
    # Seen before: "100" typed at 50-100 ms per key trained 10 steps; an output dir became "/tmemoi".
    page = new_page(browser, app_url)
    open_tab(page, "LoRA")
    page.get_by_text("Advanced").first.click()
    typed = {"training.max_steps": "100", "training.output_dir": str(tmp_path / "typed" / "memoir-run"),
             "training.learning_rate": "0.00025", "lora.rank": "12"}
    for key, text in typed.items():
        type_into(page, key, text)
    field(page, "lora.modules_to_save").click()
    page.keyboard.insert_text("lm_head")  # a paste: one input event, no key presses
    target = tmp_path / "saved.yaml"
    save_path = page.locator("#lora-save-path input, #lora-save-path textarea").first
    save_path.fill(str(target))
    page.locator("#lora-save").click()
    from playwright.sync_api import expect

    expect(page.locator("#lora-file-message")).to_contain_text("Saved to", timeout=30 * SECOND)
    saved = yaml.safe_load(target.read_text())
    assert saved["training"]["max_steps"] == 100 and saved["lora"]["rank"] == 12
    assert saved["training"]["output_dir"] == typed["training.output_dir"]
    assert saved["training"]["learning_rate"] == 0.00025 and saved["lora"]["modules_to_save"] == ["lm_head"]
    expect(page.locator("#lora-message")).to_contain_text("Settings are valid")
    for key, text in typed.items():  # the form itself still shows exactly what was typed
        assert field(page, key).input_value() == text
    page.close()


def test_a_run_survives_edits_and_a_start_in_a_second_tab(browser, app_url):
    from playwright.sync_api import expect

    first = new_page(browser, app_url)
    open_tab(first, "LoRA")
    type_into(first, "training.max_steps", "600")
    first.wait_for_timeout(1000)
    panel = open_tab(first, "Training")
    panel.get_by_role("button", name="Start", exact=True).click()
    expect(first.locator("#training-action")).to_contain_text("Started", timeout=60 * SECOND)
    expect(panel).to_contain_text(re.compile(r"step [1-9]\d*/600"), timeout=180 * SECOND)

    second = new_page(browser, app_url)
    open_tab(second, "LoRA")
    second.get_by_text("Advanced").first.click()
    type_into(second, "lora.rank", "4")
    type_into(second, "training.max_steps", "30")
    type_into(second, "training.learning_rate", "0.001")
    open_tab(second, "Training").get_by_role("button", name="Start", exact=True).click()
    expect(second.locator("#training-action")).to_contain_text("already running", timeout=30 * SECOND)
    second.reload()
    expect(open_tab(second, "Training")).to_contain_text(re.compile(r"step \d+/600"), timeout=30 * SECOND)

    expect(first.locator("#training-status")).to_contain_text("Finished 600 steps", timeout=400 * SECOND)
    second.close()
    first.close()
