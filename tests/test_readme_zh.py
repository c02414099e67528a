"""README.zh.md keeps up with README.md: every documented `gptlab` command is documented in both."""

from __future__ import annotations

import argparse
import re

from conftest import ROOT
from gptlab.cli import build_parser


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


def test_every_command_of_the_english_readme_is_in_the_chinese_one():
    commands = _subcommands()
    english = _documented((ROOT / "README.md").read_text(encoding="utf-8"), commands)
    chinese = _documented((ROOT / "README.zh.md").read_text(encoding="utf-8"), commands)
    assert {"prepare", "train", "sample", "bench train"} <= english  # the parser and the README agree at all
    assert english - chinese == set(), f"documented in README.md but not in README.zh.md: {sorted(english - chinese)}"


def test_the_chinese_readme_uses_the_chinese_corpus_and_is_linked_from_the_quick_start():
    chinese = (ROOT / "README.zh.md").read_text(encoding="utf-8")
    assert "make demo-zh" in chinese and "gptlab prepare tang-poems" in chinese
    quick_start = (ROOT / "README.md").read_text(encoding="utf-8").split("## Concepts")[0]
    assert "make demo-zh" in quick_start and "README.zh.md" in quick_start
