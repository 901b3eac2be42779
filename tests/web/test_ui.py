"""The web page, end to end: headless Chromium (Debian's package) against the real server on the tiny
models. The tiny model answers random words, so these tests check behaviour, never wording."""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import diagram_png
from tests.web.conftest import ANSWER_MS, API_KEY

PHONE = {"width": 390, "height": 844}


def test_page_is_served_at_root_ui_and_static(server) -> None:
    for path in ("/", "/ui"):
        res = requests.get(server.url + path, timeout=10)
        assert res.status_code == 200, path
        assert res.headers["content-type"].startswith("text/html")
        assert "<title>VisionRAG</title>" in res.text
        assert "litserve running" not in res.text.lower()
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg")):
        res = requests.get(f"{server.url}/static/{name}", timeout=10)
        assert res.status_code == 200 and kind in res.headers["content-type"], name
    assert requests.get(server.url + "/static/nothing.js", timeout=10).status_code == 404


@pytest.mark.browser
def test_ask_with_url_streams_the_answer(server, image_server, make_ui) -> None:
    url = image_server.add("/web/ask-url.png", diagram_png(101))
    ui = make_ui(server).open()
    with ui.page.expect_response(re.compile(r"/predict$"), timeout=ANSWER_MS) as response:
        result = ui.ask("Which boxes are connected in this diagram?", url=url)
    assert response.value.request.post_data_json["stream"] is True
    assert response.value.headers["content-type"].startswith("application/x-ndjson")
    assert ui.page.is_visible("#ask-preview-img")  # the URL's image is previewed
    assert result["answer"].strip()
    assert result["id"]
    model = requests.get(server.url + "/health", timeout=10).json()["model"]
    assert model in result["meta"]
    assert re.search(r"\b\d+ tokens\b", result["meta"]), result["meta"]
    assert re.search(r"\b\d+\.\d+ s\b", result["meta"]), result["meta"]
    stored = requests.get(f"{server.url}/history/{result['id']}", timeout=10).json()
    assert stored["answer"] == result["answer"] and stored["image_url"] == url
    ui.assert_clean()


@pytest.mark.browser
def test_ask_with_an_uploaded_file(server, make_ui) -> None:
    ui = make_ui(server).open()
    result = ui.ask("What does the left box do?", file=("upload.png", diagram_png(102)))
    src = ui.page.get_attribute("#ask-preview-img", "src")
    assert src and src.startswith("blob:")  # the chosen file is previewed
    assert ui.page.inner_text("#ask-preview-name") == "upload.png"
    assert result["answer"].strip() and result["id"]
    assert re.search(r"\b\d+ tokens\b", result["meta"])
    stored = requests.get(f"{server.url}/history/{result['id']}", timeout=10).json()
    assert stored["query"] == "What does the left box do?"
    ui.assert_clean()


@pytest.mark.browser
def test_text_search_finds_the_new_card(server, image_server, make_ui) -> None:
    ui = make_ui(server).open()
    result = ui.ask("Where does the queue lead?", url=image_server.add("/web/text.png", diagram_png(103)))
    ui.page.fill("#search-text", result["answer"])
    ui.page.select_option("#search-against", "answers")
    ui.search_until(result["id"])
    card = ui.page.locator(f'.card[data-id="{result["id"]}"]')
    assert "Where does the queue lead?" in card.inner_text()
    assert re.search(r"score \d\.\d{3}", card.inner_text())
    ui.page.wait_for_function(  # the stored image, fetched as a blob
        "id => { const i = document.querySelector(`.card[data-id='${id}'] img`);"
        " return i && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }",
        arg=result["id"],
    )
    # The filters reach the server: a tag nobody used finds nothing, a date range with today finds it.
    ui.page.fill("#search-tag", "no-such-tag")
    ui.submit_search()
    assert result["id"] not in ui.card_ids()
    ui.page.fill("#search-tag", "")
    today = ui.page.evaluate(
        "() => { const d = new Date(); d.setMinutes(d.getMinutes() - d.getTimezoneOffset());"
        " return d.toISOString().slice(0, 10); }"
    )
    ui.page.fill("#search-since", today)
    ui.page.fill("#search-until", today)
    ui.submit_search()
    assert result["id"] in ui.card_ids()
    ui.assert_clean()


@pytest.mark.browser
def test_image_search_finds_the_card(server, image_server, make_ui) -> None:
    png = diagram_png(104)
    ui = make_ui(server).open()
    result = ui.ask("Name the components.", url=image_server.add("/web/image.png", png))
    ui.page.set_input_files(
        "#search-file", files=[{"name": "same.png", "mimeType": "image/png", "buffer": png}]
    )
    assert ui.page.is_visible("#search-image-img")
    ui.page.select_option("#search-against", "images")
    ids = ui.search_until(result["id"])
    assert ids[0] == result["id"], "the same image should be the best match"
    ui.assert_clean()


@pytest.mark.browser
def test_open_a_card_and_delete_it_after_confirming(server, make_ui) -> None:
    ui = make_ui(server).open()
    result = ui.ask("Is there a cache?", file=("delete-me.png", diagram_png(105)))
    page = ui.page
    ui.submit_search("#search-recent")  # the journal lists it at once, before indexing
    opener = page.locator(f'.card[data-id="{result["id"]}"] .card-open')
    opener.focus()
    page.keyboard.press("Enter")  # keyboard opens the card
    page.wait_for_selector("#detail[open]")
    assert result["answer"] in page.inner_text("#detail-fields")
    page.keyboard.press("Escape")  # Escape closes it
    page.wait_for_selector("#detail:not([open])", state="attached")

    opener.click()
    page.wait_for_selector("#detail[open]")
    page.click("#detail-delete")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm button[value=cancel]")  # cancelling keeps it
    page.wait_for_selector("#confirm:not([open])", state="attached")
    assert requests.get(f"{server.url}/history/{result['id']}", timeout=10).status_code == 200

    page.click("#detail-delete")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-delete")
    page.wait_for_selector(f'.card[data-id="{result["id"]}"]', state="detached")
    page.wait_for_selector("#detail:not([open])", state="attached")
    assert requests.get(f"{server.url}/history/{result['id']}", timeout=10).status_code == 404
    ui.submit_search("#search-recent")
    assert result["id"] not in ui.card_ids()
    ui.assert_clean()


@pytest.mark.browser
def test_a_bad_url_shows_the_server_error_inline(server, image_server, make_ui) -> None:
    ui = make_ui(server).open()
    ui.expect_http_error(422, "/predict")
    ui.expect_http_error(404, "/web/missing.png")  # the preview of the missing image
    for bad in ("ftp://127.0.0.1/diagram.png", image_server.base + "/web/missing.png"):
        body = {"image_url": bad, "user_query": "What is this?"}
        expected = requests.post(server.url + "/predict", json=body, timeout=30)
        assert expected.status_code == 422
        ui.ask("What is this?", url=bad, expect="error")
        shown = ui.page.inner_text("#ask-error")
        assert shown == expected.json()["detail"], shown
        assert not ui.page.is_visible("#answer-box")
    ui.assert_clean()


@pytest.mark.browser
def test_with_an_api_key_the_page_asks_once_then_works(key_server, image_server, make_ui) -> None:
    assert requests.get(key_server.url + "/history", timeout=10).status_code == 401, "the key is not enforced"
    ui = make_ui(key_server)
    ui.expect_http_error(401, key_server.url)
    page = ui.page
    ui.open()
    page.wait_for_selector("#key[open]")  # the first request got a 401: the page asks for the key
    page.fill("#key-input", "wrong-key")
    page.press("#key-input", "Enter")
    page.wait_for_selector("#key[open]")  # a refused key: asked again, saying so
    assert "refused" in page.inner_text("#key-reason")
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector("#key:not([open])", state="attached")
    page.wait_for_selector("#search-status:not(:empty)")
    assert not page.is_visible("#search-error")

    result = ui.ask("Which way does data flow?", url=image_server.add("/web/key.png", diagram_png(106)))
    assert result["id"]
    assert page.evaluate("() => sessionStorage.getItem('visionrag.apiKey')") == API_KEY

    # Kept for the tab: a reload does not ask again, and the stored images load with the key.
    page.reload(wait_until="load")
    page.wait_for_selector(f'.card[data-id="{result["id"]}"]')
    page.wait_for_function(
        "() => { const i = document.querySelector('#results .card img');"
        " return i && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }"
    )
    assert not page.is_visible("#key")
    ui.assert_clean()


@pytest.mark.browser
def test_phone_width_has_no_horizontal_overflow(server, make_ui) -> None:
    ui = make_ui(server, viewport=PHONE, is_mobile=True, has_touch=True).open()
    ui.no_horizontal_overflow()
    ui.ask(
        "A rather long question about the diagram, to wrap on a phone screen?",
        file=("phone.png", diagram_png(107, size=(900, 300))),
    )
    ui.submit_search("#search-recent")
    assert ui.card_ids()
    ui.no_horizontal_overflow()
    ui.page.locator("#results .card-open").first.click()
    ui.page.wait_for_selector("#detail[open]")
    ui.no_horizontal_overflow()
    box = ui.page.locator("#detail").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    ui.assert_clean()


MARKDOWN = """# Services
The **orders** service writes to `orders_db`; snake_case_names stay as they are.

- one *item*
- [docs](https://example.com/docs)
1. first
2. second

```
<b>code stays text</b>
```
<img src=x onerror="window.pwned = 1"> <script>window.pwned = 1</script>
[click](javascript:window.pwned=1)"""


@pytest.mark.browser
def test_answers_render_as_markdown_and_never_as_html(server, make_ui) -> None:
    ui = make_ui(server).open()
    shape = ui.page.evaluate(
        """(source) => {
            const root = document.getElementById('answer');
            renderMarkdown(source, root);
            const tags = (sel) => root.querySelectorAll(sel).length;
            return {
                h: tags('h4'), strong: tags('strong'), code: tags('p code'), ul: tags('ul > li'),
                ol: tags('ol > li'), pre: root.querySelector('pre code').textContent,
                links: [...root.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.rel]),
                html: tags('img, script, b'), em: tags('em'), text: root.textContent,
            };
        }""",
        MARKDOWN,
    )
    assert (shape["h"], shape["strong"], shape["code"], shape["ul"], shape["ol"]) == (1, 1, 1, 2, 2)
    assert shape["em"] == 1  # `*item*`; the underscores of snake_case_names are not emphasis
    assert shape["pre"] == "<b>code stays text</b>"
    assert shape["links"] == [["https://example.com/docs", "noopener noreferrer nofollow"]]
    assert shape["html"] == 0
    assert "<img src=x" in shape["text"] and "<script>" in shape["text"] and "javascript:" in shape["text"]
    assert ui.page.evaluate("() => window.pwned") is None
    ui.assert_clean()


@pytest.mark.browser
def test_the_answer_is_in_view_when_it_starts_streaming(server, image_server, make_ui) -> None:
    url = image_server.add("/web/in-view.png", diagram_png(103))
    ui = make_ui(server).open()  # 1280 x 900
    ui.page.fill("#ask-url", url)
    ui.page.fill("#ask-question", "What is in view?")
    ui.page.press("#ask-question", "Enter")
    ui.page.wait_for_function(
        "() => document.getElementById('answer').dataset.state !== 'idle'", timeout=ANSWER_MS
    )
    in_view = ui.page.evaluate(
        """() => { const r = document.getElementById('answer').getBoundingClientRect();
                   return r.top >= 0 && r.top + 40 <= window.innerHeight; }"""
    )
    assert in_view
    ui.page.wait_for_function(
        "() => ['done', 'error'].includes(document.getElementById('answer').dataset.state)", timeout=ANSWER_MS
    )
    ui.assert_clean()
