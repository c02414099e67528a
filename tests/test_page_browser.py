"""The exploration page in a real headless browser (Debian's chromium + chromedriver, via selenium),
against `gptlab serve` started here on a free localhost port. Screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import ROOT, serving

ARTIFACTS = ROOT / "test-artifacts"
PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    """`gptlab serve RUN` on 127.0.0.1, up within 120 s, always stopped."""
    with serving(tiny_run) as url:
        yield url


def chromium(profile: Path, languages: str | None = None) -> webdriver.Chrome:
    """A headless chromium with a fresh profile and nothing that calls home; languages: the browser's
    preferred languages (e.g. "zh-CN,zh"), its default unless given. The caller quits it."""
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1200,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    if languages:
        options.add_experimental_option("prefs", {"intl.accept_languages": languages})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """One headless chromium for the module."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _settled(driver) -> bool:
    """No keystroke refresh pending and no request in flight: the page shows its final state."""
    return driver.execute_script("return document.body.dataset.busy") == "0"


def _bars(driver) -> list[tuple[int, float]]:
    """(id, probability) of each bar, read in one go (a redraw cannot interleave)."""
    return [
        (int(i), float(p))
        for i, p in driver.execute_script(
            "return Array.from(document.querySelectorAll('#bars .bar'), b => [b.dataset.id, b.dataset.prob])"
        )
    ]


def _set(driver, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def test_page_prompt_bars_step_attention_embeddings(server, browser, tiny_run):
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _explore(server, browser, tiny_run)
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "page-failure.png"))  # what the page showed when it failed
        raise


def _explore(server, browser, tiny_run):
    from gptlab.inference.probs import next_token_probs, top_candidates
    from gptlab.runs import load_run

    loaded = load_run(tiny_run)
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    wait.until(lambda d: "run tiny" in d.find_element(By.ID, "info").text)

    # Type a prompt and ask for 7 candidates: the chart shows exactly the model's top 7.
    _set(browser, "k", "7")
    _set(browser, "prompt", PROMPT)
    wait.until(lambda d: _settled(d) and d.find_element(By.ID, "bars").get_attribute("data-prompt") == PROMPT)
    assert len(_bars(browser)) == 7
    bars = _bars(browser)
    probs = [p for _, p in bars]
    assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    assert probs == sorted(probs, reverse=True)
    expected = top_candidates(loaded.tokenizer, next_token_probs(loaded.model, loaded.tokenizer.encode(PROMPT)), 7)
    assert [i for i, _ in bars] == [c.id for c in expected]
    assert probs == pytest.approx([c.prob for c in expected], abs=1e-6)
    chips = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert [c.find_element(By.TAG_NAME, "small").text for c in chips] == [
        str(i) for i in loaded.tokenizer.encode(PROMPT)
    ]
    browser.save_screenshot(str(ARTIFACTS / "page-next-token.png"))

    # Step once greedily: the text grows by the most likely token.
    prompt = browser.find_element(By.ID, "prompt")
    browser.find_element(By.ID, "greedy").click()
    wait.until(lambda d: len(prompt.get_attribute("value")) == len(PROMPT) + 1)
    grown = PROMPT + expected[0].piece
    assert prompt.get_attribute("value") == grown
    # Click the third candidate: that token is appended.
    wait.until(lambda d: _settled(d) and d.find_element(By.ID, "bars").get_attribute("data-prompt") == grown)
    third = _bars(browser)[2][0]
    browser.find_elements(By.CSS_SELECTOR, "#bars .bar rect.track")[2].click()
    wait.until(lambda d: len(prompt.get_attribute("value")) == len(grown) + 1)
    text = prompt.get_attribute("value")
    assert text == grown + loaded.tokenizer.id_to_piece(third)

    # Attention: the heatmap is T x T for the current context, nothing drawn above the diagonal.
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="attention"]').click()
    canvas = browser.find_element(By.ID, "attn")
    T = len(text)
    wait.until(lambda d: canvas.get_attribute("data-size") == str(T))
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    wait.until(lambda d: canvas.get_attribute("data-layer") == "1")
    assert len(Select(browser.find_element(By.ID, "head")).options) == loaded.config.model.n_head
    cell, margin = int(canvas.get_attribute("data-cell")), int(canvas.get_attribute("data-margin"))
    assert int(canvas.get_attribute("width")) == margin + T * cell
    pixel = (
        "const [r, c] = arguments; const m = +arguments[2], s = +arguments[3];"
        "return Array.from(document.getElementById('attn').getContext('2d')"
        ".getImageData(m + c * s + s / 2, m + r * s + s / 2, 1, 1).data);"
    )
    assert browser.execute_script(pixel, 0, T - 1, margin, cell)[:3] == [255, 255, 255]  # future: empty
    assert browser.execute_script(pixel, 0, 0, margin, cell)[:3] != [255, 255, 255]  # the first token sees itself
    browser.save_screenshot(str(ARTIFACTS / "page-attention.png"))

    # Embeddings: every token is a point; picking one lists its nearest neighbours.
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="embeddings"]').click()
    emb = browser.find_element(By.ID, "emb")
    wait.until(lambda d: emb.get_attribute("data-points") == str(loaded.tokenizer.vocab_size))
    _set(browser, "emb-pick", "e\n")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours li")) == 10)
    assert "nearest to e" in browser.find_element(By.ID, "neighbours-title").text
    browser.save_screenshot(str(ARTIFACTS / "page-embeddings.png"))

    # A character the tokenizer lacks: a readable message on the page, not a blank chart.
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="next"]').click()
    _set(browser, "prompt", "caf\u00e9")
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "not in this char tokenizer's vocabulary" in browser.find_element(By.ID, "error").text
