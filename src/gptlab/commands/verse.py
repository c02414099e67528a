"""`gptlab verse TEXT|FILE [--json]`: check poems with the verse checker (posttrain/verse.py).

Where the poems come from: a record file (.jsonl, .json, .gz of these, or the built-in tang-poems)
holds one poem per record, its `paragraphs` (a list of strings, as the Tang poems) or its `text`; any
other file, or TEXT itself when it names no file, holds poems separated by blank lines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gptlab.data.corpora import RECORD_SUFFIXES, SkipReport, iter_records
from gptlab.errors import GptlabError
from gptlab.posttrain.verse import VerseReport, check

_BLANK_LINE = re.compile(r"\n\s*\n")


def _record_poem(record: Any) -> str | None:
    """A poem record's text: its paragraphs one per line, or its text; None when it has neither."""
    if not isinstance(record, dict):
        return None
    paragraphs = record.get("paragraphs")
    if isinstance(paragraphs, list) and paragraphs and all(isinstance(p, str) for p in paragraphs):
        return "\n".join(paragraphs)
    text = record.get("text")
    return text if isinstance(text, str) else None


def read_poems(source: str) -> list[str]:
    """The poems of source: a record file, a text file, or the text itself (see the module docstring)."""
    path = Path(source).expanduser()
    suffix = path.name.lower().removesuffix(".gz")
    is_records = source == "tang-poems" or (path.is_file() and suffix.endswith(RECORD_SUFFIXES))
    if is_records:
        report = SkipReport()
        poems = []
        for record in iter_records([source], report):
            text = _record_poem(record)
            if text is None:
                report.skip("record without 'paragraphs' (a list of strings) or a 'text' string")
            else:
                poems.append(text)
        skipped = "; ".join(report.lines())
    else:
        if path.is_file():
            try:
                source = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise GptlabError(f"{path} is not UTF-8 text") from None
        poems, skipped = _BLANK_LINE.split(source.replace("\r\n", "\n")), ""
    poems = [p for p in poems if p.strip()]
    if not poems:
        raise GptlabError(f"no poem to check in {source[:60]!r}{f' ({skipped})' if skipped else ''}")
    return poems


def describe(report: VerseReport) -> str:
    """A report for people: the lines, then one line of the measures."""
    lines = "\n".join(f"  {line}  ({len(line)})" for line in report.lines) or "  (no line)"
    groups = ", ".join(g or "?" for g in report.rhyme_groups) or "none"
    return (
        f"{lines}\n  {report.form}, {len(report.lines)} lines; rhyme {report.rhyme:.2f} (even lines: {groups}), "
        f"tones {report.tones:.2f}, variety {report.variety:.2f}; score {report.score:.3f}"
    )


def verse(source: str, as_json: bool = False) -> None:
    """`gptlab verse`: print each poem's report (one JSON object per line with as_json)."""
    for i, poem in enumerate(read_poems(source)):
        report = check(poem)
        if as_json:
            print(json.dumps(report.to_json(), ensure_ascii=False))
        else:
            print(f"{'' if i == 0 else chr(10)}poem {i + 1}:\n{describe(report)}")
