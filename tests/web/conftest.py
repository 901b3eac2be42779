"""Fixtures of the web page tests: headless Chromium from Debian's package (no browser download), a page
that records every console error, and a second server with an API key."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "web-test-key-7f3c"
WAIT_MS = 30_000  # the longest any single browser wait may take
ANSWER_MS = 90_000  # an answer from the tiny model on a busy 2-core machine

# Chromium logs every HTTP error answer of fetch() or <img> as a console error; a test that provokes one
# on purpose declares it (status, url part), and only those are forgiven.
_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


class UI:
    """One browser page on the server's web page, collecting console errors and uncaught exceptions."""

    def __init__(self, page: Any, base_url: str, shot: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.shot = shot
        self.errors: list[str] = []
        self.expected_http: list[tuple[int, str]] = []
        page.set_default_timeout(WAIT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        m = _HTTP_ERROR.search(msg.text)
        url = (msg.location or {}).get("url", "")
        if m and any(int(m[1]) == status and part in url for status, part in self.expected_http):
            return
        self.errors.append(f"console: {msg.text} ({url})")

    def expect_http_error(self, status: int, url_part: str) -> None:
        self.expected_http.append((status, url_part))

    def open(self, path: str = "/") -> UI:
        self.page.goto(self.base_url + path, wait_until="load")
        self.page.wait_for_selector("#search-status:not(:empty), #search-error:not([hidden]), #key[open]")
        return self

    def assert_clean(self) -> None:
        assert not self.errors, "browser console errors:\n" + "\n".join(self.errors)

    # -- the page's actions ------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        url: str | None = None,
        file: tuple[str, bytes] | None = None,
        expect: str = "done",
    ) -> dict[str, str]:
        page = self.page
        if url is not None:
            page.fill("#ask-url", url)
        if file is not None:
            name, data = file
            page.set_input_files("#ask-file", files=[{"name": name, "mimeType": "image/png", "buffer": data}])
        page.fill("#ask-question", question)
        page.press("#ask-question", "Enter")  # Enter submits
        page.wait_for_function(
            "() => ['done', 'error'].includes(document.getElementById('answer').dataset.state)"
            " || !document.getElementById('ask-error').hidden",
            timeout=ANSWER_MS,
        )
        state = page.get_attribute("#answer", "data-state")
        if state != expect:
            error = page.inner_text("#ask-error") if page.is_visible("#ask-error") else ""
            raise AssertionError(f"answer state {state!r}, wanted {expect!r}; error shown: {error!r}")
        return {
            "answer": page.get_attribute("#answer", "data-markdown") or "",
            "shown": page.inner_text("#answer"),
            "meta": page.inner_text("#answer-meta"),
            "id": page.get_attribute("#answer", "data-id") or "",
        }

    def results_seq(self) -> int:
        return int(self.page.get_attribute("#results", "data-seq") or 0)

    def submit_search(self, button: str = "#search-submit") -> None:
        """Run one search (or list) and wait until its results are shown."""
        before = self.results_seq()
        self.page.click(button)
        self.page.wait_for_function(
            f"() => Number(document.getElementById('results').dataset.seq || 0) > {before}"
        )

    def search_until(self, card_id: str, timeout: float = 60.0) -> list[str]:
        """Search again until the card shows up (indexing is asynchronous); the result ids in order."""
        deadline = time.monotonic() + timeout
        while True:
            self.submit_search()
            error = self.page.inner_text("#search-error") if self.page.is_visible("#search-error") else ""
            assert not error, f"the search failed: {error}"
            ids = self.card_ids()
            if card_id in ids:
                return ids
            if time.monotonic() > deadline:
                raise AssertionError(f"card {card_id} not found within {timeout} s; results: {ids}")
            time.sleep(0.5)

    def card_ids(self) -> list[str]:
        return self.page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")

    def no_horizontal_overflow(self) -> None:
        widths = self.page.evaluate(
            "() => ({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,"
            " view: window.innerWidth})"
        )
        assert max(widths["doc"], widths["body"]) <= widths["view"], f"horizontal overflow: {widths}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("VISIONRAG_REQUIRE_BROWSER"):  # .ci/run installs it: missing there is a failure
            pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def make_ui(browser: Any, tmp_path: Path) -> Iterator[Callable[..., UI]]:
    """make_ui(server, viewport=...) -> UI; each page's final state is saved as a screenshot in tmp_path,
    and a console error fails the test (also when the test itself did not check)."""
    made: list[tuple[Any, UI]] = []

    def make(server: ServerProcess, viewport: dict[str, int] | None = None, **context_args: Any) -> UI:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, **context_args)
        ui = UI(context.new_page(), server.url, tmp_path / f"final-{len(made)}.png")
        made.append((context, ui))
        return ui

    yield make
    errors = []
    for context, ui in made:
        try:
            ui.page.screenshot(path=str(ui.shot), full_page=True)
        finally:
            errors.extend(ui.errors)
            context.close()
    assert not errors, "browser console errors:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def key_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server that needs API_KEY on every route but /health and the web page."""
    return start_server(VISIONRAG_API_KEY=API_KEY)
