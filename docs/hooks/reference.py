"""MkDocs hook: write the generated reference pages before each build (mkdocs.yml `hooks:`).

docs/reference/commands.md and http-api.md (and their .zh.md) are made from the code of this checkout
(src/ is put first on the path, as the tests do): the command reference from gptlab's argument
parser, the HTTP API from the server's OpenAPI schema. They are written into docs/ (git ignores
them) so the i18n plugin sees them as the ordinary pages it pairs by suffix; a file is rewritten only
when its text changes, so `mkdocs serve`, which watches docs/, does not rebuild in a loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

HOOKS = Path(__file__).resolve().parent
ROOT = HOOKS.parents[1]
for path in (HOOKS, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import cli_reference  # noqa: E402
import http_reference  # noqa: E402

LANGUAGES = ("en", "zh")
_pages: dict[str, str] = {}  # made once per process: the i18n plugin runs a build per language


def generated_pages() -> dict[str, str]:
    """{path under docs/: Markdown} of every generated page, in both languages."""
    if not _pages:
        from gptlab.cli import build_parser

        schema, hidden = http_reference.server_routes()
        for lang in LANGUAGES:
            suffix = "" if lang == "en" else f".{lang}"
            _pages[f"reference/commands{suffix}.md"] = cli_reference.render(build_parser(), lang)
            _pages[f"reference/http-api{suffix}.md"] = http_reference.render(schema, hidden, lang)
    return _pages


def write_pages(docs_dir: Path) -> list[Path]:
    """Write the generated pages under docs_dir where their text changed; the paths written."""
    written = []
    for name, text in generated_pages().items():
        path = docs_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def on_pre_build(config) -> None:
    """MkDocs event: before the files are gathered."""
    write_pages(Path(config["docs_dir"]))
