"""The command reference page, written from gptlab's own argument parser (so it says what `--help` says).

Every subcommand (and sub-subcommand, as `bench train`) gets a section with a fixed anchor (`#train`,
`#bench-train`): its one-line help, its usage exactly as argparse prints it, its description, and a
table of its arguments with their defaults and help texts. The help texts stay in English on the
Chinese page too: they are what the CLI prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator

USAGE_COLUMNS = "80"  # argparse wraps usage at $COLUMNS: fixed here, and narrow enough for the page

TEXT = {
    "en": {
        "title": "Command reference",
        "intro": (
            "Every `gptlab` command with every option, generated from the command line's own parser when "
            "the site is built, so this page and `gptlab COMMAND --help` say the same thing. Every command "
            "also takes `-h`/`--help`. Configuration fields (`KEY=VALUE`) are described in "
            "[Configuration](configuration.md)."
        ),
        "commands": "Commands",
        "examples": "Examples (from `gptlab --help`):",
        "header": "| Argument | Default | Description |",
    },
    "zh": {
        "title": "命令参考",
        "intro": (
            "这里列出 `gptlab` 的每个命令及其全部选项。本页在构建网站时直接从命令行自己的参数解析器生成，"
            "所以与 `gptlab 命令 --help` 的输出完全一致；说明文字保留命令行打印的英文原文。每个命令都接受 "
            "`-h`/`--help`。配置字段（`KEY=VALUE`）见[配置](configuration.md)。"
        ),
        "commands": "命令一览",
        "examples": "示例（摘自 `gptlab --help`）：",
        "header": "| 参数 | 默认值 | 说明 |",
    },
}


@contextlib.contextmanager
def _columns(value: str) -> Iterator[None]:
    """Set $COLUMNS for argparse's wrapping, and put back what was there."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage text of parser as `--help` starts with it, wrapped at USAGE_COLUMNS."""
    with _columns(USAGE_COLUMNS):
        return parser.format_usage().strip()


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of parser, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def escape(text: str) -> str:
    """Text as Markdown shows it literally: characters Markdown would read as markup are escaped (`<`,
    which Markdown cannot escape, as an entity), except inside `code spans`, which the help texts
    use for commands."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = re.sub(r"([\\*_>\[\]|#])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text for one table cell: escaped, on one line."""
    return escape(" ".join(text.split()))


def _argument(action: argparse.Action) -> str:
    """How the argument is written: `--top-k TOP_K`, `RUN`, `CORPUS_OR_PATH ...`."""
    metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    value = {"?": f"[{metavar}]", "*": f"[{metavar} ...]", "+": f"{metavar} [{metavar} ...]"}.get(action.nargs, metavar)
    if not action.option_strings:
        return value
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    return ", ".join(action.option_strings) + " " + value


def _default(action: argparse.Action) -> str:
    """The default worth showing: none for flags, for empty lists, or where the help names it already
    (`--workers`' default is the build machine's core count: its help says `all cores`)."""
    default = action.default
    if action.nargs == 0 or default in (None, [], argparse.SUPPRESS) or "default" in (action.help or ""):
        return ""
    return f"`{default}`"


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as argparse prints it (%(default)s and the like filled in)."""
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _arguments_table(parser: argparse.ArgumentParser, header: str) -> list[str]:
    rows = [
        f"| `{_argument(a)}` | {_default(a)} | {_cell(_help(a, parser.prog))} |"
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]
    if not rows:
        return []
    return [header, "| --- | --- | --- |", *rows, ""]


def _anchor(prog: str) -> str:
    """`gptlab bench train` -> `bench-train`; the top-level parser is `gptlab`."""
    words = prog.split()[1:] or ["gptlab"]
    return "-".join(words)


def _section(parser: argparse.ArgumentParser, one_line: str, level: int, text: dict[str, str]) -> list[str]:
    lines = [f"{'#' * level} {parser.prog} {{#{_anchor(parser.prog)}}}", ""]
    if one_line:
        lines += [escape(one_line[0].upper() + one_line[1:]) + ".", ""]
    lines += ["```text", usage(parser), "```", ""]
    if parser.description:
        lines += [escape(" ".join(parser.description.split())), ""]
    lines += _arguments_table(parser, text["header"])
    for _, help_, sub in subcommands(parser):
        lines += _section(sub, help_, level + 1, text)
    return lines


def render(parser: argparse.ArgumentParser, lang: str) -> str:
    """The whole reference page in lang ("en" or "zh") for the top-level parser."""
    text = TEXT[lang]
    lines = [
        f"# {text['title']}",
        "",
        "<!-- Generated by docs/hooks/cli_reference.py from gptlab's parser at build time; do not edit. -->",
        "",
        text["intro"],
        "",
        "```text",
        usage(parser),
        "```",
        "",
        escape(parser.description or ""),
        "",
        f"## {text['commands']} {{#commands}}",
        "",
        *[f"- [`{name}`](#{_anchor(sub.prog)}): {escape(help_)}" for name, help_, sub in subcommands(parser)],
        "",
    ]
    lines += _arguments_table(parser, text["header"])
    if parser.epilog:
        lines += [text["examples"], "", "```text", parser.epilog.strip(), "```", ""]
    for _, help_, sub in subcommands(parser):
        lines += _section(sub, help_, 2, text)
    return "\n".join(lines).rstrip() + "\n"
