"""The page's learning views in headless chromium, end to end against `gptlab serve` of a small run:

- the guided walkthrough: every stage of the step-through in English, then (after the language switch) in
  Chinese, each with its concept's text and formula in that language, and the diagram of the data's path
  lighting the component that computed the stage; no English label left on the Chinese page;
- "Train on this": one training step raises the targets' probabilities (the first step's "before" is the
  served model's own distribution), more steps drive the window's loss down, reset forgets them;
- the history slider: the bars, the attention map and the greedy continuation follow the kept step.

Screenshots (English and Chinese) go to test-artifacts/; the getting-started docs show them
(page-walkthrough, page-train, page-history and their -zh twins in docs/assets)."""

from __future__ import annotations

import json
import math
import re
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import serving
from test_page_browser import ARTIFACTS, _set, _settled, browser, chromium, server  # noqa: F401 (fixtures)

PROMPT = "ROMEO:\nWhat"
CJK = re.compile(r"[\u4e00-\u9fff]")
# Words of the documents a Chinese learner meets, by stage (the last part of its name).
ZH_WORDS = {
    "ids": "词元",
    "wte": "嵌入",
    "wpe": "位置嵌入",
    "layernorm": "层归一化",
    "qkv": "自注意力",
    "resid_attn": "残差连接",
    "fc": "前馈网络",
    "probs": "梯度下降",
}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def _part(name: str) -> str:
    """The diagram's component that computes a stage, from its name (independently of the page's rule)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        where = parts[2]
        return {"ln_1": "norm1", "attn": "attention", "resid_attn": "add1", "ln_2": "norm2", "mlp": "mlp"}.get(
            where, "add2"
        )
    if parts[0] == "ln_f":
        return "final_norm"
    return {"ids": "tokens", "wte": "embedding", "wpe": "embedding", "embed": "embedding", "logits": "head"}.get(
        parts[0], "softmax"
    )


def _walk(browser) -> dict:
    return browser.execute_script(
        "const w = document.getElementById('walk'), d = document.getElementById('diagram');"
        "return {index: w.dataset.index, concept: w.dataset.concept, part: d.dataset.part,"
        " lit: Array.from(d.querySelectorAll('.part.current'), p => p.dataset.part),"
        " title: document.getElementById('walk-title').textContent,"
        " text: document.getElementById('walk-text').textContent,"
        " formula: document.getElementById('walk-formula').textContent,"
        " live: document.getElementById('walk-live').textContent,"
        " heat: document.getElementById('heat').dataset.stage};"
    )


def _shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_walkthrough_training_step_and_history(server, browser):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        stages = [s["name"] for s in _post(server + "/api/trace", {"text": PROMPT})["stages"]]
        wait = WebDriverWait(browser, 60)
        browser.get(server + "/?lang=en")
        wait.until(lambda d: "run tiny" in d.find_element(By.ID, "info").text)
        _set(browser, "prompt", PROMPT)
        _walkthrough(browser, wait, stages)
        _train(server, browser, wait)
        _history(server, browser, wait)
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "learn-failure.png"))  # what the page showed when it failed
        raise


def _walk_every_stage(browser, wait, stages: list[str], lang: str) -> None:
    """Press "next" through every stage: text, formula and lit component follow, in the page's language."""
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="trace"]').click()
    browser.find_element(By.ID, "trace-head")  # present
    while _walk(browser)["index"] != "0":  # back to the first stage
        browser.find_element(By.ID, "trace-prev").click()
        wait.until(_settled)
    seen = set()
    for index, name in enumerate(stages):
        if index:
            browser.find_element(By.ID, "trace-next").click()
        wait.until(lambda d, index=index: _settled(d) and _walk(d)["index"] == str(index))
        walk = _walk(browser)
        assert walk["heat"] == name  # the numbers and the words describe the same stage
        assert walk["lit"] == [_part(name)] == [walk["part"]], name
        assert walk["title"] and walk["formula"] and len(walk["text"]) > (20 if lang == "zh" else 40), name
        assert ("→" in walk["live"]) and re.search(r"\d", walk["live"]), name  # the model's own sizes and numbers
        has_cjk = bool(CJK.search(walk["title"] + walk["text"]))
        assert has_cjk == (lang == "zh"), (name, walk["text"])
        last = name.split(".")[-1]
        if lang == "zh" and last in ZH_WORDS:
            assert ZH_WORDS[last] in walk["title"] + walk["text"], (name, walk["text"])
        seen.add(walk["concept"])
        if name == "blocks.0.attn.weights":
            _shot(browser, "page-walkthrough" + ("-zh" if lang == "zh" else ""))
    # Every concept of a classic model was met, each with its own text.
    assert {
        "tokens",
        "embedding",
        "position",
        "layernorm",
        "weights",
        "mask",
        "residual",
        "fc",
        "gelu",
        "softmax",
    } <= seen


def _walkthrough(browser, wait, stages: list[str]) -> None:
    _walk_every_stage(browser, wait, stages, "en")
    assert browser.execute_script("return document.documentElement.lang") == "en"
    browser.find_element(By.ID, "lang").click()  # the switch: the whole page in Chinese
    wait.until(lambda d: d.execute_script("return document.documentElement.lang") == "zh-CN")
    _walk_every_stage(browser, wait, stages, "zh")
    assert "运行 tiny" in browser.find_element(By.ID, "info").text
    # No English label, button or hint is left on the Chinese page, in any view.
    for view in ("next", "attention", "embeddings", "trace", "train", "history"):
        browser.find_element(By.CSS_SELECTOR, f'.tab[data-view="{view}"]').click()
        wait.until(_settled)
        left = browser.execute_script(
            "const zh = TEXTS.zh, text = document.body.innerText;"
            "return Object.entries(TEXTS.en).filter(([k, v]) => v !== zh[k] && v.length > 3 && !v.includes('{')"
            " && text.includes(v)).map(([k]) => k);"
        )
        assert left == [], f"English left in the {view} view: {left}"
    browser.find_element(By.ID, "lang").click()  # back to English for the rest
    wait.until(lambda d: d.execute_script("return document.documentElement.lang") == "en")


def _rows(browser) -> list[dict]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#train-table tbody tr'), r =>"
        " ({target: +r.dataset.target, before: +r.dataset.pBefore, after: +r.dataset.pAfter,"
        "   cells: Array.from(r.cells, c => c.textContent)}));"
    )


def _trained(browser) -> str:
    return browser.find_element(By.ID, "train-summary").get_attribute("data-trained-steps")


def _train(server, browser, wait) -> None:
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="train"]').click()
    _set(browser, "train-steps", "1")
    browser.find_element(By.ID, "train-step").click()
    wait.until(lambda d: _settled(d) and _trained(d) == "1")
    rows = _rows(browser)
    assert len(rows) == len(PROMPT) - 1  # a char run: each position predicts the next character
    # "Before" is the served model's own prediction: the last position's target as /api/next gives it.
    assert math.isclose(rows[-1]["before"], _first_before(server), rel_tol=1e-4)
    # One step of gradient descent on this window: its targets become more likely.
    assert sum(math.log(r["after"]) for r in rows) > sum(math.log(r["before"]) for r in rows)
    assert sum(r["after"] > r["before"] for r in rows) > len(rows) / 2
    assert rows[-1]["cells"][2] == PROMPT[-1] and rows[-1]["cells"][5].startswith(("+", "−"))
    assert browser.find_elements(By.CSS_SELECTOR, "#train-grads .named-bar")
    assert browser.find_elements(By.CSS_SELECTOR, "#train-updates .named-bar")
    first_after = [r["after"] for r in rows]
    # Ten more steps continue from the copy: the window is being memorised.
    _set(browser, "train-steps", "10")
    browser.find_element(By.ID, "train-step").click()
    wait.until(lambda d: _settled(d) and _trained(d) == "11")
    rows = _rows(browser)
    assert [r["before"] for r in rows] == first_after
    losses = browser.find_elements(By.CSS_SELECTOR, "#train-losses circle")
    assert len(losses) == 12  # eleven steps' losses and the loss after the last
    assert sum(math.log(r["after"]) for r in rows) > sum(math.log(r["before"]) for r in rows)
    browser.set_window_size(1200, 1400)  # the whole table in the picture
    _shot(browser, "page-train")
    browser.find_element(By.ID, "lang").click()
    wait.until(lambda d: "损失" in d.find_element(By.ID, "train-summary").text)
    _shot(browser, "page-train-zh")
    browser.find_element(By.ID, "lang").click()
    browser.set_window_size(1200, 1100)
    # Reset: the copy is the run's again, so the next step starts from the served model's probabilities.
    browser.find_element(By.ID, "train-reset").click()
    wait.until(lambda d: _settled(d) and _trained(d) == "0" and not _rows(d))
    _set(browser, "train-steps", "1")
    browser.find_element(By.ID, "train-step").click()
    wait.until(lambda d: _settled(d) and _trained(d) == "1")
    assert math.isclose(_rows(browser)[-1]["before"], _first_before(server), rel_tol=1e-4)


def _first_before(server) -> float:
    """The served model's probability of the window's last target (the prompt's last character)."""
    before = _post(server + "/api/next", {"text": PROMPT[:-1], "k": 1000})["candidates"]
    return next(c["prob"] for c in before if c["piece"] == PROMPT[-1])


def _history(server, browser, wait) -> None:
    kept = json.loads(urllib.request.urlopen(server + "/api/history", timeout=30).read())
    assert len(kept["steps"]) >= 2 and kept["steps"][0] == 0
    browser.find_element(By.CSS_SELECTOR, '.tab[data-view="history"]').click()
    bars = browser.find_element(By.ID, "history-bars")
    last = str(kept["steps"][-1])
    wait.until(lambda d: _settled(d) and bars.get_attribute("data-step") == last)
    trained = _bars_of(browser)
    assert (
        trained[0][0]
        == _post(server + "/api/next", {"text": PROMPT, "k": 10, "step": int(last)})["candidates"][0]["id"]
    )
    slider = browser.find_element(By.ID, "history-slider")
    slider.send_keys(Keys.HOME)  # to step 0: the weights before any training
    wait.until(lambda d: _settled(d) and bars.get_attribute("data-step") == "0")
    initial = _bars_of(browser)
    assert initial != trained  # the bars changed with the step
    expected = _post(server + "/api/next", {"text": PROMPT, "k": 10, "step": 0})["candidates"]
    assert [i for i, _ in initial] == [c["id"] for c in expected]
    text = browser.find_element(By.ID, "history-text")
    assert text.get_attribute("data-step") == "0" and text.text.startswith(PROMPT.split("\n")[0])
    assert browser.find_element(By.ID, "history-label").text.startswith("step 0")
    slider.send_keys(Keys.END)
    wait.until(lambda d: _settled(d) and bars.get_attribute("data-step") == last)
    _shot(browser, "page-history")
    browser.find_element(By.ID, "lang").click()
    wait.until(lambda d: d.find_element(By.ID, "history-label").text.startswith("第"))
    _shot(browser, "page-history-zh")
    browser.find_element(By.ID, "lang").click()


def _bars_of(browser) -> list[tuple[int, float]]:
    return [
        (int(i), float(p))
        for i, p in browser.execute_script(
            "return Array.from(document.querySelectorAll('#history-bars .bar'), b => [b.dataset.id, b.dataset.prob])"
        )
    ]


def test_page_speaks_the_browsers_language_and_remembers_the_switch(server, tmp_path):  # noqa: F811
    """A browser that prefers Chinese gets the Chinese page; the switch's choice outlives a reload."""
    driver = chromium(tmp_path / "profile", languages="zh-CN,zh")
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(server + "/")
        wait.until(lambda d: "运行 tiny" in d.find_element(By.ID, "info").text)
        assert driver.execute_script("return document.documentElement.lang") == "zh-CN"
        assert driver.find_element(By.CSS_SELECTOR, '.tab[data-view="train"]').text == "在这上面训练"
        driver.find_element(By.ID, "lang").click()
        wait.until(lambda d: "run tiny" in d.find_element(By.ID, "info").text)
        assert driver.find_element(By.CSS_SELECTOR, '.tab[data-view="train"]').text == "Train on this"
        driver.refresh()  # the choice is remembered over the browser's preference
        wait.until(lambda d: "run tiny" in d.find_element(By.ID, "info").text)
        driver.get(server + "/?lang=zh")  # and the address chooses over both
        wait.until(lambda d: "运行 tiny" in d.find_element(By.ID, "info").text)
    finally:
        driver.quit()


def test_walkthrough_of_the_modern_recipe(browser, char_dataset, tmp_path):  # noqa: F811
    """The demo's recipe (cpu-modern: RoPE, RMSNorm, QK-norm, ReLU², an untied head) walked in Chinese: each of
    its own components explained where it acts, and named in the diagram."""
    from gptlab.config import build_config
    from gptlab.train.trainer import train

    overrides = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "batch_size=2", "max_steps=2"]
    cfg = build_config("cpu-modern", None, [*overrides, "eval_interval=2", "eval_batches=1", "device=cpu"])
    cfg.data = str(char_dataset)
    run = tmp_path / "modern"
    train(cfg, run)
    with serving(run) as url:
        stages = [s["name"] for s in _post(url + "/api/trace", {"text": PROMPT})["stages"]]
        wait = WebDriverWait(browser, 60)
        browser.get(url + "/?lang=zh")
        wait.until(lambda d: "运行 modern" in d.find_element(By.ID, "info").text)
        _set(browser, "prompt", PROMPT)
        browser.find_element(By.CSS_SELECTOR, '.tab[data-view="trace"]').click()
        wait.until(lambda d: _settled(d) and _walk(d)["index"] == "0")
        diagram = browser.find_element(By.ID, "diagram").text
        assert all(name in diagram for name in ("RoPE", "QK-norm", "ReLU²", "RMSNorm")), diagram
        concepts = {}
        for index, name in enumerate(stages):
            if index:
                browser.find_element(By.ID, "trace-next").click()
            wait.until(lambda d, index=index: _settled(d) and _walk(d)["index"] == str(index))
            walk = _walk(browser)
            assert walk["concept"] != "other" and CJK.search(walk["text"]), name
            concepts[name.split(".")[-1]] = walk
        assert concepts["q_rope"]["concept"] == "rope" and "RoPE" in concepts["q_rope"]["title"]
        assert concepts["angles"]["part"] == "embedding" and concepts["q_norm"]["concept"] == "qk_norm"
        assert concepts["rmsnorm"]["concept"] == "rmsnorm" and concepts["relu2"]["part"] == "mlp"
        assert "layernorm" not in {w["concept"] for w in concepts.values()}
