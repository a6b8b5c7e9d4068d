"""Browser tests of the web UI: Playwright (sync API) driving Debian's Chromium, headless,
against the real app served by uvicorn on a thread, its agents' model one ``ScriptedModel``
and their tools the real computer tools on the ``process`` backend.

The tests skip, saying why, when Playwright or ``/usr/bin/chromium`` is missing (CI installs
both). Screenshots go to ``tests/web/artifacts/`` (git-ignored), one per screen.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from openbuda.api.app import create_app
from openbuda.ports import ModelClient
from openbuda.testing import ScriptedModel
from tests.client.live_server import API_KEY, free_port, server_settings, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 15_000


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@dataclass
class UiServer:
    """The served app: ``url``, the scripted ``model``, and an API client with the owner key."""

    url: str
    model: ScriptedModel
    api: httpx.Client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def server(tmp_path: Path) -> Generator[UiServer]:
    model = ScriptedModel(name="test:scripted", chunk_size=4)

    def resolve(_spec: str | None) -> ModelClient:
        return model

    port = free_port()
    settings = server_settings(tmp_path, port=port, computer_backend="process")
    app = create_app(settings, models=resolve, announce=lambda _text: None)
    with (
        serving(app, port) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        ) as api,
    ):
        yield UiServer(url, model, api)
    model.assert_all_used()


@dataclass
class Screen:
    """A page of the UI with its console errors collected (a CSP violation is one)."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list[str])

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole page as an artifact and print where it went."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def page_errors(self) -> list[str]:
        """Errors of the page itself: uncaught exceptions and CSP violations (a refused request
        the UI handled, like a 401 at sign-in, is not one)."""
        return [e for e in self.errors if "uncaught" in e or "Content Security Policy" in e]

    def sign_in(self) -> None:
        self.page.goto(self.url + "/")
        self.page.get_by_label("API key").fill(API_KEY)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("heading", name="Agents").wait_for()


def _screen(browser: Browser, server: UiServer, **context: Any) -> Iterator[Screen]:
    browser_context = browser.new_context(**context)
    browser_context.set_default_timeout(TIMEOUT_MS)
    page = browser_context.new_page()
    screen = Screen(page, server.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            screen.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: screen.errors.append(f"uncaught: {error}"))
    try:
        yield screen
    finally:
        browser_context.close()


@pytest.fixture
def screen(browser: Browser, server: UiServer) -> Iterator[Screen]:
    yield from _screen(browser, server, viewport={"width": 1280, "height": 900})


@pytest.fixture
def phone(browser: Browser, server: UiServer) -> Iterator[Screen]:
    yield from _screen(
        browser, server, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
