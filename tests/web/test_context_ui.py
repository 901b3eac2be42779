"""The web page's "Use history" switch, end to end in headless Chromium against the real server: the answer
lists the earlier interactions it was given with, and each opens its card."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from tests.conftest import diagram_png, wait_until
from tests.web.conftest import ANSWER_MS


@pytest.mark.browser
def test_use_history_shows_the_interactions_used(server, image_server, make_ui) -> None:
    url = image_server.add("/web/context.png", diagram_png(131))
    caption = f"the checkout service calls the payment provider {uuid.uuid4().hex[:6]}"
    doc = requests.post(f"{server.url}/history", json={"image_url": url, "answer": caption}, timeout=30)
    assert doc.status_code == 201, doc.text
    doc_id = doc.json()["id"]

    def indexed() -> bool:
        r = requests.post(f"{server.url}/history/search", json={"image_url": url, "limit": 100}, timeout=30)
        return r.status_code == 200 and doc_id in {hit["id"] for hit in r.json()["results"]}

    wait_until(indexed, 30, "the imported document to be searchable")

    ui = make_ui(server).open()
    assert not ui.page.is_checked("#ask-context")
    ui.page.check("#ask-context")
    with ui.page.expect_response(re.compile(r"/predict$"), timeout=ANSWER_MS) as response:
        result = ui.ask("What does the checkout call?", url=url)
    assert response.value.request.post_data_json["context"] is True
    assert result["answer"].strip()
    assert ui.page.is_visible("#answer-context")
    links = ui.page.eval_on_selector_all("#answer-context-list a", "links => links.map(a => a.dataset.id)")
    assert links and links[0] == doc_id, "the same image's document comes first"
    stored = requests.get(f"{server.url}/history/{result['id']}", timeout=10).json()
    assert stored["context"] == links
    ui.page.click(f'#answer-context-list a[data-id="{doc_id}"]')
    ui.page.wait_for_selector("#detail[open]")
    assert caption in ui.page.inner_text("#detail-fields")
    ui.page.click("#detail .dialog-close button")

    ui.page.uncheck("#ask-context")  # without the switch: no context asked, none listed
    with ui.page.expect_response(re.compile(r"/predict$"), timeout=ANSWER_MS) as response:
        ui.ask("What does the checkout call?", url=url)
    assert "context" not in response.value.request.post_data_json
    assert not ui.page.is_visible("#answer-context")
    ui.assert_clean()
