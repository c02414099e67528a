"""The READMEs stay short and in step: README.md at most 200 lines, README.zh.md its Chinese
counterpart (every `gptlab` command the English one names, the Chinese corpus), and every link they
make into the repository (the docs pages) resolves."""

from __future__ import annotations

import argparse
import re

import pytest

from conftest import ROOT
from gptlab.cli import build_parser

READMES = ("README.md", "README.zh.md")
# Pages the docs build generates from the code (the CLI's parser, the server's OpenAPI schema).
GENERATED = re.compile(r"docs/reference/(commands|http-api)[^/]*\.md$")


def _subcommands() -> dict[str, set[str]]:
    """The CLI's subcommands, each with its own subcommands (`bench` -> {`train`})."""

    def choices(parser) -> dict:
        for action in parser._actions:  # argparse keeps subparsers only here
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    return {name: set(choices(sub)) for name, sub in choices(build_parser()).items()}


def _documented(text: str, commands: dict[str, set[str]]) -> set[str]:
    """The commands a README names as `gptlab NAME` (with the nested name where there is one)."""
    found = set()
    for name, nested in commands.items():
        if not re.search(rf"\bgptlab {name}\b", text):
            continue
        found.add(name)
        found.update(f"{name} {n}" for n in nested if re.search(rf"\bgptlab {name} {n}\b", text))
    return found


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def test_the_english_readme_is_short():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_every_command_of_the_english_readme_is_in_the_chinese_one():
    commands = _subcommands()
    english = _documented(_read("README.md"), commands)
    chinese = _documented(_read("README.zh.md"), commands)
    # the everyday path, and a nested subcommand: the parser and the README agree at all
    assert {"prepare", "train", "sample", "eval", "serve", "bench train"} <= english
    assert english - chinese == set(), f"documented in README.md but not in README.zh.md: {sorted(english - chinese)}"


def test_the_chinese_readme_uses_the_chinese_corpus_and_is_linked_before_the_quick_start():
    chinese = _read("README.zh.md")
    assert "make demo-zh" in chinese and "gptlab prepare tang-poems" in chinese
    intro, quick_start = _read("README.md").split("\n## ")[:2]
    assert quick_start.startswith("Quick start") and "make demo-zh" in quick_start
    assert "README.zh.md" in intro


@pytest.mark.parametrize("readme", READMES)
def test_every_link_of_a_readme_into_the_repository_resolves(readme):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(readme))
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local), f"{readme} links into no docs page"
    missing = [t for t in local if not (ROOT / t).exists() and not GENERATED.search(t)]
    assert missing == [], f"{readme} links to files that do not exist: {missing}"
