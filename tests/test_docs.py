"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict` and offline, every
page is there in English and Chinese, the generated reference says what the CLI and the server say,
every image a page shows exists, every command the pages and READMEs show runs (tests/docs_commands.py
says how), and the built site renders in headless chromium (screenshots in test-artifacts/)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ROOT, SHARED_DATA, cli_env
from docs_commands import Workspace, page_commands, run_page
from test_page_browser import ARTIFACTS, browser  # noqa: F401 (the headless chromium fixture)

DOCS = ROOT / "docs"
HOOKS = DOCS / "hooks"
sys.path.insert(0, str(HOOKS))  # the generators of the reference pages, as the build hook imports them

from cli_reference import USAGE_COLUMNS, subcommands  # noqa: E402
from http_reference import tiny_run  # noqa: E402
from reference import generated_pages  # noqa: E402 (what the build hook writes into docs/)

NOT_PAGES = (HOOKS,)  # mkdocs.yml exclude_docs: the build's code
GENERATED = ["reference/commands", "reference/http-api"]
# Images the pages may show, committed (a build must not depend on a test run): the page-*.png are the
# screenshots test_page_browser.py (next-token, attention, embeddings) and test_trace_page.py
# (page-trace-attention, and page-trace: its page-trace-probs.png) and test_page_learn_browser.py (page-walkthrough,
# page-train, page-history and their -zh twins) save in test-artifacts/ from a run of 30 steps; train-loss.png is
# `gptlab plot` of 300 steps of a 2-layer, 64-wide char model on tinyshakespeare.
ASSETS = [
    "page-next-token.png",
    "page-attention.png",
    "page-embeddings.png",
    "page-trace.png",
    "page-trace-attention.png",
    "page-walkthrough.png",
    "page-walkthrough-zh.png",
    "page-train.png",
    "page-train-zh.png",
    "page-history.png",
    "page-history-zh.png",
    "train-loss.png",
]


def pages() -> list[Path]:
    """Every Markdown page of the site, both languages (generated ones once the site is built)."""
    return sorted(p for p in DOCS.rglob("*.md") if not any(p.is_relative_to(d) for d in NOT_PAGES))


def twin(path: Path) -> Path:
    """docs/X.md <-> docs/X.zh.md."""
    name = path.name
    return path.with_name(name[: -len(".zh.md")] + ".md" if name.endswith(".zh.md") else name[:-3] + ".zh.md")


def page_pairs() -> list[tuple[str, list[Path]]]:
    """(name, [X.md, X.zh.md]) of every page and of the READMEs, for the commands test."""
    found = {}
    for path in [ROOT / "README.md", ROOT / "README.zh.md", *pages()]:
        english = path if not path.name.endswith(".zh.md") else twin(path)
        found.setdefault(str(english.relative_to(ROOT))[:-3], []).append(path)
    return sorted(found.items())


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as `make docs` builds it (strict: any warning fails), into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**cli_env(), "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_site_builds_strictly_in_both_languages_and_offline(site: Path):
    assert (site / "index.html").is_file() and (site / "zh" / "index.html").is_file()
    for lang in ("", "zh/"):
        for name in GENERATED:
            assert (site / lang / name / "index.html").is_file(), f"{lang}{name} was not generated"
    # Offline: no page loads a script, style sheet or font from another host.
    remote = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"[^>]*>")
    for html in site.rglob("*.html"):
        found = [m for m in remote.findall(html.read_text(encoding="utf-8")) if 'rel="canonical"' not in m]
        assert not found, f"{html.relative_to(site)} fetches from the network: {found[:3]}"


def test_every_page_exists_in_english_and_chinese():
    # The generated pages are written in both languages by the build (the test above checks them).
    for path in [*pages(), ROOT / "README.md", ROOT / "README.zh.md"]:
        assert twin(path).is_file(), f"{path.relative_to(ROOT)} has no {twin(path).name} beside it"


def test_every_benchmark_has_a_page():
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        page = DOCS / "benchmarks" / f"{script.stem}.md"
        assert page.is_file(), f"benchmarks/{script.name} has no page {page.relative_to(ROOT)}"


def _help(args: list[str], columns: str) -> str:
    """What `gptlab ARGS --help` prints on a terminal this many columns wide."""
    from gptlab.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        mp.setenv("COLUMNS", columns)
        main([*args, "--help"])
    return out.getvalue()


def test_command_reference_says_what_help_says():
    from gptlab.cli import build_parser

    texts = {lang: generated_pages()[f"reference/commands{lang}.md"] for lang in ("", ".zh")}
    stack = [([], build_parser())]
    while stack:
        words, parser = stack.pop()
        shown = _help(words, USAGE_COLUMNS)
        usage = shown.split("\n\n")[0].strip()
        options = {o for action in parser._actions for o in action.option_strings}
        for lang, text in texts.items():
            assert usage in text, f"commands{lang}.md lacks the usage of `gptlab {' '.join(words)}`:\n{usage}"
            missing = sorted(o for o in options if f"`{o}" not in text and f", {o}" not in text)
            assert not missing, f"commands{lang}.md lacks {missing} of `gptlab {' '.join(words)}`"
        stack += [([*words, name], sub) for name, _, sub in subcommands(parser)]


def test_http_reference_lists_every_route_of_the_server(tmp_path: Path):
    from gptlab.serve.app import create_app

    app = create_app(tiny_run(tmp_path), device="cpu")
    try:
        schema = app.openapi()
    finally:
        app.state.service.stop()
    for lang in ("", ".zh"):
        text = generated_pages()[f"reference/http-api{lang}.md"]
        for path, item in schema["paths"].items():
            for method in item:
                assert f"## {method.upper()} {path} " in text, f"http-api{lang}.md lacks {method.upper()} {path}"
        assert "`GET /metrics`" in text  # a route outside the schema, listed from the app's routes


def _image_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)", text) + re.findall(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", text)


def test_every_image_a_page_shows_exists():
    for path in [*pages(), ROOT / "README.md", ROOT / "README.zh.md"]:
        for link in _image_links(path.read_text(encoding="utf-8")):
            assert not re.match(r"^(https?:)?//", link), f"{path.relative_to(ROOT)} shows a remote image {link}"
            target = (path.parent / link.split("#")[0]).resolve()
            assert target.is_file(), f"{path.relative_to(ROOT)} shows {link}, which does not exist"
    for name in ASSETS:
        data = (DOCS / "assets" / name).read_bytes()
        assert data.startswith(b"\x89PNG"), f"docs/assets/{name} is not a PNG"


# --- every command the docs show runs ---------------------------------------------------------

SAMPLE_PAGE = """# A page

```bash
gptlab prepare shakespeare --out data/shakespeare-char   # a comment
gptlab train --data data/shakespeare-char \\
    --out runs/demo && gptlab plot runs/demo | tee log.txt
pip install gptlab
N=2 python benchmarks/engine.py --quick
```

<!-- docs-test: help-only -->
```console
$ torchrun --nproc_per_node=8 -m gptlab train --data D --out R
step 1 | loss 4.2
```

```text
gptlab not-a-command
```

```sh
gptlab sample runs/demo --prompt "ROMEO:"  # docs-test: help-only
```
"""


def test_commands_are_found_as_a_reader_would_type_them(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE_PAGE, encoding="utf-8")
    found = [(c.line, c.argv, c.env, c.help_only) for c in page_commands(page, tmp_path)]
    assert found == [
        (4, ["gptlab", "prepare", "shakespeare", "--out", "data/shakespeare-char"], {}, False),
        (5, ["gptlab", "train", "--data", "data/shakespeare-char", "--out", "runs/demo"], {}, False),
        (5, ["gptlab", "plot", "runs/demo"], {}, False),
        (8, ["python", "benchmarks/engine.py", "--quick"], {"N": "2"}, False),
        (13, ["torchrun", "--nproc_per_node=8", "-m", "gptlab", "train", "--data", "D", "--out", "R"], {}, True),
        (22, ["gptlab", "sample", "runs/demo", "--prompt", "ROMEO:"], {}, True),
    ]


def test_a_failing_command_is_reported_with_its_page_and_line(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```bash\ngptlab info --list\ngptlab info --preset no-such-preset\n```\n", encoding="utf-8"
    )
    workspace = Workspace(tmp_path / "unused", tmp_path / "cache")  # the page names none of its paths
    failures = run_page(page_commands(page, tmp_path), workspace, tmp_path / "work", ROOT)
    assert len(failures) == 1 and failures[0].startswith("page.md:5: `gptlab info --preset no-such-preset` exited 1")
    assert "no-such-preset" in failures[0].splitlines()[-1]  # the command's own error line follows


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """FIXTURE (docs_commands.py) run once over small slices of ../shared/data, which also stand in
    for the built-in corpora (through $GPTLAB_CACHE)."""
    root = tmp_path_factory.mktemp("docs-workspace")
    shakespeare = root / "cache" / "corpora" / "shakespeare"
    shakespeare.mkdir(parents=True)
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (shakespeare / "tinyshakespeare.txt").write_text(text[:60_000], encoding="utf-8")
    tang = root / "cache" / "corpora" / "tang-poems"
    tang.mkdir(parents=True)
    poems = (SHARED_DATA / "tang_poems.jsonl").read_text(encoding="utf-8").splitlines()
    # 400 poems, and one with a full-width colon: poem-data's prompt template has one, and a record
    # with a character the tokenizer lacks is skipped.
    poems = poems[:400] + [next(p for p in poems if "：" in p)]
    (tang / "poet.tang.0.json").write_text("[" + ",\n".join(poems) + "]", encoding="utf-8")
    workspace = Workspace(root / "base", root / "cache")
    workspace.build(ROOT)
    return workspace


PAIRS = page_pairs()


@pytest.mark.parametrize("paths", [paths for _, paths in PAIRS], ids=[name for name, _ in PAIRS])
def test_every_command_a_page_shows_runs(paths: list[Path], docs_workspace: Workspace, tmp_path: Path):
    commands = [c for path in paths for c in page_commands(path, ROOT)]
    if not commands:
        return
    failures = run_page(commands, docs_workspace, tmp_path / "work", ROOT)
    assert not failures, "\n".join(failures)


# --- the built site in a browser ----------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def site_url(site: Path):
    """The built site over HTTP on a free localhost port (as `mkdocs serve` would show it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_site_renders_in_a_browser_in_both_languages(site_url: str, browser):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    browser.set_window_size(1400, 1000)  # wide enough for Material's navigation sidebar
    wait = WebDriverWait(browser, 30)
    browser.get(site_url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "article h1"))
    assert "gptlab" in browser.title
    # The language switcher: a link to each language's copy of the page.
    switcher = browser.execute_script(
        "return Array.from(document.querySelectorAll('.md-select a[hreflang]'), a => a.getAttribute('hreflang'))"
    )
    assert {"en", "zh"} <= set(switcher), switcher
    browser.save_screenshot(str(ARTIFACTS / "docs-index.png"))

    browser.get(site_url + "/zh/getting-started/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "article h1"))
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang").startswith("zh")
    heading = browser.find_element(By.CSS_SELECTOR, "article h1").text
    assert re.search(r"[\u4e00-\u9fff]", heading), f"the Chinese page's heading is not Chinese: {heading!r}"
    nav = browser.find_element(By.CSS_SELECTOR, ".md-nav--primary").get_attribute("textContent")
    assert "概念" in nav, "the navigation is not translated"
    browser.save_screenshot(str(ARTIFACTS / "docs-zh-getting-started.png"))
