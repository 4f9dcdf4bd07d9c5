"""What every browser test shares: the app served on a free loopback port, Debian's chromium driven by
Playwright, a 1280x800 page, and opening a tab."""

import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SECOND = 1000  # Playwright waits are in milliseconds
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does).")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app():
    """The workbench app as launch.py serves it; a run it started is stopped before it closes."""
    from launch import make_app, parse_args

    app, kwargs = make_app(parse_args(["--port", str(free_port())]))
    app.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield app
    finally:
        app.workbench.stop_training()
        if app.workbench.job is not None:
            app.workbench.job.wait(120)
        app.close()


@contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60 * SECOND)
    page.goto(url)
    return page


def open_tab(page, name: str):
    page.get_by_role("tab", name=name, exact=True).click()
    panel = page.locator('[role="tabpanel"]:visible')
    panel.first.wait_for()
    return panel.first
