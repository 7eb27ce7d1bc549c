"""The built-in chat page (``GET /``) in a real browser: Debian's headless Chromium, driven by selenium,
against the live server (vLLM included) and, for the API key prompt, a second app that loads nothing.

What a person does with it: load it, ask (keyboard only), watch the answer stream in, read the
sources and the stage-time bar, stop an answer mid-way (the server's abort counter rises), ask a
follow-up (the history goes to the OpenAI chat route), upload files and find their text by asking,
delete a document. Document text containing HTML must show as text. Screenshots go to
``reports/browser/`` (``tests/support/browser.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from rag_service.api.app import build_app
from tests.support.browser import chromium, console_messages, screenshot, set_request_headers, wait_for
from tests.support.paths import repo_settings
from tests.support.server import LiveServer, serve_in_thread

ABORTS = re.compile(r'^rag_generation_aborts_total\{reason="client_disconnect"\} (\S+)$', re.M)
# Test-only time control (RAG_FAULTS__ENABLED on the live server): delays added around the real stages,
# e.g. before each generated token reaches the pipeline, so an answer is still streaming when the test
# looks at it or stops it. Sent by the browser through DevTools, never by the page.
FAULTS = "X-Rag-Fault-Delay"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def by_id(driver: Any, element_id: str) -> Any:
    return driver.find_element("id", element_id)


def css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def open_page(driver: Any, url: str) -> None:
    driver.get(url + "/")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), "the page", 30, driver)


def ask(driver: Any, question: str) -> Any:
    """Types the question and presses Enter (no mouse); returns the new turn's element."""
    from selenium.webdriver.common.keys import Keys

    before = len(css(driver, "#conversation > li"))
    box = by_id(driver, "question")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    return wait_for(lambda: css(driver, "#conversation > li")[before:], "the new turn", 10, driver)[0]


def finished(driver: Any, turn: Any, timeout_s: float = 180) -> Any:
    wait_for(lambda: "finished" in turn.get_attribute("class"), "the answer to end", timeout_s, driver)
    return turn


def aborts(url: str) -> float:
    found = ABORTS.search(httpx.get(f"{url}/metrics", timeout=10).text)
    return float(found.group(1)) if found else 0.0


def chat_bodies(driver: Any) -> list[dict[str, Any]]:
    """The bodies of the page's POSTs to /v1/chat/completions since the last call (DevTools log)."""
    bodies = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if request["url"].endswith("/v1/chat/completions") and request.get("postData"):
            bodies.append(json.loads(request["postData"]))
    return bodies


def sources_of(turn: Any) -> list[dict[str, str]]:
    return [
        {
            "id": s.get_attribute("data-id"),
            "title": s.find_element("css selector", ".title").get_attribute("textContent"),
            "code": s.find_element("css selector", ".id").get_attribute("textContent"),
            "score": s.find_element("css selector", ".score").get_attribute("textContent"),
            "retrievers": s.find_element("css selector", ".retrievers").get_attribute("textContent"),
            "passage": s.find_element("css selector", ".passage").get_attribute("textContent"),
        }
        for s in turn.find_elements("css selector", ".source")
    ]


# --- the live server ----------------------------------------------------------------------------------


def test_ask_streams_the_answer_then_shows_sources_and_the_stage_times(
    live_server: LiveServer, browser: Any
) -> None:
    from selenium.webdriver.common.keys import Keys

    budgets = httpx.get(f"{live_server.url}/readyz", timeout=10).json()["budgets_ms"]
    open_page(browser, live_server.url)
    assert by_id(browser, "readiness").text == "ready"
    set_request_headers(browser, {FAULTS: "token=40"})
    try:
        turn = ask(browser, "What does the assert statement do?")
        # Streamed: text on the page while the answer is still being generated.
        streaming = wait_for(
            lambda: (
                "streaming" in turn.get_attribute("class")
                and turn.find_element("css selector", ".text").text.strip()
            ),
            "streamed text before the answer ends",
            120,
            browser,
        )
        finished(browser, turn)
    finally:
        set_request_headers(browser, {})
    answer = turn.find_element("css selector", ".text").text
    assert answer.startswith(streaming) and len(answer) > len(streaming), (streaming, answer)

    sources = sources_of(turn)
    assert sources, "no sources shown"
    assert sources[0]["id"].startswith("pyref:assert#"), sources[0]
    for s in sources:
        assert s["title"] and s["code"] == s["id"], s
        assert re.fullmatch(r"score -?\d+\.\d{3}", s["score"]), s
        assert re.fullmatch(r"((dense|lexical) #\d+(, )?)+", s["retrievers"]), s
    # The passage on demand: closed at first, opened from the keyboard.
    first = turn.find_element("css selector", ".source summary")
    passage = turn.find_element("css selector", ".source .passage")
    assert not passage.is_displayed()
    first.send_keys(Keys.ENTER)
    wait_for(passage.is_displayed, "the passage to open", 5, browser)
    assert "assert" in passage.text

    # The bar: every stage with its time and the server's budget for it.
    legend = {
        li.get_attribute("data-stage"): li.text for li in turn.find_elements("css selector", ".legend li")
    }
    assert set(legend) == {"embed", "retrieve", "first_token", "generate", "total"}, legend
    for stage, text in legend.items():
        assert re.search(rf"\d+ ms / {round(budgets[stage])} ms", text), (stage, text)
    widths = [seg.size["width"] for seg in turn.find_elements("css selector", ".bar .seg")]
    assert len(widths) == 4 and widths[3] > 0, widths  # the generation took visible time
    assert not turn.find_elements("css selector", ".badge.error"), turn.text
    for panel in ("conversation", "documents"):  # nothing sticks out sideways
        assert browser.execute_script(
            "const e = document.getElementById(arguments[0]); return e.scrollWidth <= e.clientWidth", panel
        ), panel
    screenshot(browser, "chat-answer")
    assert not [m for m in console_messages(browser) if "SEVERE" in m and "favicon" not in m]


def test_a_follow_up_sends_the_conversation_to_the_chat_route(live_server: LiveServer, browser: Any) -> None:
    open_page(browser, live_server.url)
    chat_bodies(browser)  # forget earlier requests
    first = finished(browser, ask(browser, "What is a lambda expression?"))
    first_answer = first.find_element("css selector", ".text").text
    second = finished(browser, ask(browser, "How is it different from a def statement?"))
    assert second.find_element("css selector", ".text").text.strip()
    bodies = chat_bodies(browser)
    assert [b["messages"] for b in bodies] == [
        [{"role": "user", "content": "What is a lambda expression?"}],
        [
            {"role": "user", "content": "What is a lambda expression?"},
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "How is it different from a def statement?"},
        ],
    ]
    assert all(b["stream"] is True for b in bodies)
    by_id(browser, "new-chat").click()
    assert not css(browser, "#conversation > li")


def test_stop_aborts_the_generation_on_the_server(live_server: LiveServer, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    open_page(browser, live_server.url)
    before = aborts(live_server.url)
    set_request_headers(browser, {FAULTS: "token=300"})  # about 40 s for a full answer
    try:
        turn = ask(browser, "How does the with statement call __enter__ and __exit__?")
        wait_for(
            lambda: turn.find_element("css selector", ".text").text.strip(), "the first words", 120, browser
        )
        assert by_id(browser, "stop").is_enabled()
        by_id(browser, "question").send_keys(Keys.ESCAPE)  # Escape is the Stop button's key
        finished(browser, turn, 10)
    finally:
        set_request_headers(browser, {})
    badges = [b.text for b in turn.find_elements("css selector", ".badge")]
    assert badges == ["stopped: generation aborted"], badges
    assert not by_id(browser, "stop").is_enabled()
    wait_for(lambda: aborts(live_server.url) > before, "rag_generation_aborts{reason=client_disconnect}", 30)
    assert not turn.find_elements("css selector", ".timing")  # no timings: the answer never finished


def test_badges_say_when_an_answer_was_cut_short_or_retrieval_fell_back(
    live_server: LiveServer, browser: Any
) -> None:
    open_page(browser, live_server.url)
    # The embedding arrives after its 2 s budget (hybrid search goes on with the lexical list alone),
    # and tokens arrive slowly enough that the request's 10 s deadline ends the generation.
    set_request_headers(browser, {FAULTS: "embed=2500,token=600", "X-Deadline-Ms": "10000"})
    try:
        turn = finished(browser, ask(browser, "What does the global statement do?"))
    finally:
        set_request_headers(browser, {})
    badges = [b.text for b in turn.find_elements("css selector", ".badge")]
    assert badges == [
        "degraded: the generate stage ran out of time, the answer is cut short",
        "retrieval fallback: lexical list only (embed_late)",
    ], badges
    assert turn.find_element("css selector", ".text").text.strip()  # what came in time is kept
    sources = sources_of(turn)
    assert sources and all(s["retrievers"].startswith("lexical #") for s in sources), sources
    screenshot(browser, "chat-degraded")


def test_uploaded_files_are_found_by_asking_and_deleted_by_id(
    live_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    note = tmp_path / "zorblat-harbour.md"
    note.write_text(
        "# The Zorblat harbour lighthouse\n\nThe Zorblat harbour lighthouse is painted teal. It was built "
        "in 1873 by the engineer Mirela Quandt, and its lamp can be seen forty kilometres out at sea.\n"
    )
    corpus = tmp_path / "beir-corpus.jsonl"
    rows = [
        json.dumps({"_id": "quandt-1", "title": "Mirela Quandt", "text": "Mirela Quandt designed lamps."}),
        "{not json",
        json.dumps({"_id": "quandt-2", "title": "Empty", "text": ""}),
        json.dumps({"_id": "x" * 600, "title": "Too long an id", "text": "The server refuses this id."}),
    ]
    corpus.write_text("\n".join(rows) + "\n")

    open_page(browser, live_server.url)
    documents_before = int(by_id(browser, "stats").find_element("css selector", "dd.documents").text)
    by_id(browser, "files").send_keys(f"{note}\n{corpus}")
    by_id(browser, "upload").click()
    status = by_id(browser, "upload-status")
    wait_for(lambda: status.text.startswith("done"), "the upload to end", 120, browser)
    log = [li.text for li in css(browser, "#upload-log li")]
    assert "beir-corpus.jsonl: line 2: not JSON" in log, log
    assert "beir-corpus.jsonl: line 3: quandt-2 has no text" in log, log
    assert "zorblat-harbour.md: 1 stored, 0 unchanged, 1 chunks" in log, log
    # The server's own error for the batch it refused (the page does not check id lengths).
    refused = [line for line in log if "400 invalid_request_error" in line]
    assert len(refused) == 1 and "documents.1.id" in refused[0], log
    assert status.text == "done: 3 of 3 documents sent"
    assert browser.execute_script(
        "const e = document.getElementById('documents'); return e.scrollWidth <= e.clientWidth"
    ), "the upload log sticks out of the panel"
    assert by_id(browser, "upload-progress").get_attribute("value") == "3"
    stats = by_id(browser, "stats")
    wait_for(
        lambda: int(stats.find_element("css selector", "dd.documents").text) == documents_before + 1,
        "the stats to count the new document",
        10,
        browser,
    )

    turn = finished(browser, ask(browser, "What colour is the Zorblat harbour lighthouse painted?"))
    sources = sources_of(turn)
    assert sources[0]["id"] == "zorblat-harbour.md#0", sources
    assert sources[0]["title"] == "The Zorblat harbour lighthouse"
    assert "painted teal" in sources[0]["passage"]
    screenshot(browser, "chat-upload")

    by_id(browser, "delete-id").send_keys("zorblat-harbour.md")
    by_id(browser, "delete").click()
    result = by_id(browser, "delete-result")
    wait_for(lambda: result.text.startswith("deleted"), "the delete", 30, browser)
    assert re.fullmatch(r"deleted zorblat-harbour\.md \(seq \d+\)", result.text)
    by_id(browser, "delete").click()  # the same id again: the server's 404, shown as it said it
    wait_for(lambda: "404" in result.text, "the second delete's 404", 30, browser)
    assert result.text == (
        "delete zorblat-harbour.md: 404 not_found_error: no document with id 'zorblat-harbour.md'"
    )


def test_document_text_with_html_renders_as_text(live_server: LiveServer, browser: Any) -> None:
    title = '<img src=x onerror="document.body.dataset.xss=1">Quillfeather <b>notes</b>'
    text = (
        "<script>document.body.dataset.xss=2</script>The Quillfeather ferry leaves the Varnholm pier at "
        'seven. <img src=x onerror="document.body.dataset.xss=3"> <a href="javascript:alert(1)">timetable</a>'
    )
    r = httpx.post(
        f"{live_server.url}/v1/documents",
        json={"documents": [{"id": "<i>quillfeather</i>", "title": title, "text": text}]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    try:
        open_page(browser, live_server.url)
        turn = finished(browser, ask(browser, "When does the Quillfeather ferry leave the Varnholm pier?"))
        source = next(s for s in sources_of(turn) if s["id"] == "<i>quillfeather</i>#0")
        assert source["title"] == title and source["code"] == "<i>quillfeather</i>#0"
        assert "<script>document.body.dataset.xss=2</script>" in source["passage"]
        conversation = by_id(browser, "conversation")
        for tag in ("img", "script", "b", "i", "a"):
            assert not conversation.find_elements("css selector", tag), tag
        assert browser.execute_script("return document.body.dataset.xss") is None
        screenshot(browser, "chat-html-as-text")
    finally:
        httpx.delete(f"{live_server.url}/v1/documents/%3Ci%3Equillfeather%3C%2Fi%3E", timeout=60)


# --- a second app, nothing loaded: the key prompt, the 401, the layout --------------------------------


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    settings = repo_settings().model_copy(update={"api_key": SecretStr("s3cret")})
    with serve_in_thread(build_app(settings)) as url:  # lifespan off: writes past the key answer 503
        yield url


def test_the_page_asks_for_the_key_and_shows_the_servers_401(keyed_url: str, browser: Any) -> None:
    browser.get(keyed_url + "/")
    browser.execute_script("sessionStorage.clear()")
    open_page(browser, keyed_url)
    dialog = by_id(browser, "key-dialog")
    wait_for(dialog.is_displayed, "the key prompt", 5, browser)
    by_id(browser, "key-cancel").click()
    wait_for(lambda: not dialog.is_displayed(), "the prompt to close", 5, browser)

    by_id(browser, "delete-id").send_keys("some-doc")
    by_id(browser, "delete").click()
    result = by_id(browser, "delete-result")
    wait_for(lambda: result.text, "the delete's answer", 10, browser)
    assert result.text == (
        "delete some-doc: 401 authentication_error: missing API key: send 'Authorization: Bearer <key>'"
    )
    wait_for(dialog.is_displayed, "the prompt again after the 401", 5, browser)
    by_id(browser, "api-key").send_keys("wrong")
    by_id(browser, "key-save").click()
    by_id(browser, "delete").click()
    wait_for(lambda: "invalid API key" in result.text, "the wrong key's 401", 10, browser)
    assert result.text == "delete some-doc: 401 authentication_error: invalid API key"

    by_id(browser, "api-key").clear()
    by_id(browser, "api-key").send_keys("s3cret")
    by_id(browser, "key-save").click()
    by_id(browser, "delete").click()
    # Past the key: this app never loads its index, so the server says it is not ready.
    wait_for(lambda: "503" in result.text, "the 503 past the key", 10, browser)
    assert result.text.startswith("delete some-doc: 503 service_unavailable: service is starting")
    assert browser.execute_script("return sessionStorage.getItem('rag-api-key')") == "s3cret"


def test_the_page_works_on_a_narrow_screen_with_the_keyboard(keyed_url: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with chromium(390, 844) as driver:
        driver.get(keyed_url + "/")
        driver.execute_script("sessionStorage.setItem('rag-api-key', 'x')")  # no prompt in the way
        open_page(driver, keyed_url)
        width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"scrolls sideways: {width}"
        chat, documents = by_id(driver, "chat").rect, by_id(driver, "documents").rect
        assert documents["y"] >= chat["y"] + chat["height"], (chat, documents)  # one column
        by_id(driver, "key-button").click()
        by_id(driver, "key-cancel").click()
        order = []
        for _ in range(12):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            order.append(driver.execute_script("return document.activeElement.id"))
        controls = ("question", "ask", "new-chat", "refresh-stats", "files", "upload", "delete-id", "delete")
        for control in controls:
            assert control in order, (control, order)
        assert order.index("question") < order.index("ask") < order.index("delete")
        screenshot(driver, "chat-narrow")


def test_the_page_and_its_files_are_served_from_the_package(keyed_url: str) -> None:
    page = httpx.get(keyed_url + "/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Nothing from another origin: every script, stylesheet and icon is one of ours.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert ref.startswith("/static/"), ref
        assert httpx.get(keyed_url + ref).status_code == 200, ref
    for name in ("main.js", "api.js", "chat.js", "timing.js", "documents.js"):
        js = httpx.get(f"{keyed_url}/static/{name}")
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text, name
    for path in ("/static/nothing.js", "/static/..%2Fpage.py", "/static/__init__.py"):
        assert httpx.get(keyed_url + path).status_code == 404, path
    config = httpx.get(keyed_url + "/page/config").json()
    assert config == {
        "auth_required": True,
        "model": "smollm2-135m-instruct",
        "max_batch_docs": 256,
        "max_body_bytes": 1_000_000,
    }
    schema = httpx.get(keyed_url + "/openapi.json").json()
    assert not {"/", "/static/{name}", "/page/config"} & set(schema["paths"])
