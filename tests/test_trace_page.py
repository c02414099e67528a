"""The page's step-through view in headless chromium: the arrow keys walk through every stage of a
2-layer model's forward pass, each drawn as its heatmap, and the last stage's top token is the one the
next-token panel (/api/next) shows. Uses the server and browser fixtures of test_page_browser."""

from __future__ import annotations

import json
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from test_page_browser import ARTIFACTS, _set, _settled, browser, server  # noqa: F401 (fixtures)

PROMPT = "ROMEO:\nWhat"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def test_step_through_every_stage_to_the_next_token(server, browser):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _step_through(server, browser)
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "trace-failure.png"))
        raise


def _step_through(server, browser):
    stages = [s["name"] for s in _post(server + "/api/trace", {"text": PROMPT})["stages"]]
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    wait.until(lambda d: "run tiny" in d.find_element(By.ID, "info").text)
    _set(browser, "prompt", PROMPT)
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="trace"]').click()
    heat = browser.find_element(By.ID, "heat")
    wait.until(lambda d: _settled(d) and heat.get_attribute("data-stage") == "ids")
    # The architecture is the model's: two blocks, each with its norms, attention and MLP, every stage in it.
    assert len(browser.find_elements(By.CSS_SELECTOR, '#arch .arch-box[data-module^="blocks."]')) >= 2 * 4
    assert [int(b.get_attribute("data-index")) for b in browser.find_elements(By.CSS_SELECTOR, "#arch .stage")] == list(
        range(len(stages))
    )  # drawn in the order the data flows
    body = browser.find_element(By.TAG_NAME, "body")
    for index, name in enumerate(stages):
        if index:
            body.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d, index=index: _settled(d) and heat.get_attribute("data-index") == str(index))
        assert heat.get_attribute("data-stage") == name
        assert browser.find_element(By.CSS_SELECTOR, "#arch .stage.current").get_attribute("data-index") == str(index)
        assert "→ [" in browser.find_element(By.ID, "stage-op").text
        if name == "blocks.0.attn.weights":
            browser.save_screenshot(str(ARTIFACTS / "page-trace-attention.png"))
    body.send_keys(Keys.ARROW_RIGHT)  # past the last stage: stays there
    wait.until(_settled)
    assert heat.get_attribute("data-stage") == "probs"
    browser.save_screenshot(str(ARTIFACTS / "page-trace-probs.png"))
    top = int(browser.find_element(By.ID, "trace-top").get_attribute("data-id"))
    assert top == _post(server + "/api/next", {"text": PROMPT, "k": 5})["candidates"][0]["id"]
    body.send_keys(Keys.ARROW_LEFT)  # and back
    wait.until(lambda d: _settled(d) and heat.get_attribute("data-stage") == "logits")
