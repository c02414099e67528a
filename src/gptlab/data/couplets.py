"""Couplets (對句) from poem records: the first line of each couplet -> the second, a real
source -> target task for the encoder–decoder.

A poem record (chinese-poetry's shape, as in tang_poems.jsonl) holds its lines in `paragraphs`,
each a sentence or two such as "秦川雄帝宅，函谷壯皇居。". Every sentence ending in 。！？ or ；
that is two lines joined by one "，" gives a pair. Regulated verse pairs lines of equal length
made of Chinese characters, so a pair whose lines differ in length or hold anything else (notes
in brackets, missing-character marks, variant readings) is passed over, counted with the reason.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.data.corpora import SkipReport, iter_records
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write
from gptlab.outputs import check_output_file

SENTENCE_END = re.compile(r"(?<=[。！？；])")
COMMA = "，"


@dataclass
class CoupletResult:
    """What a conversion found."""

    pairs: int
    poems: int  # records that gave at least one pair
    skipped: SkipReport


def _is_hanzi_line(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c) == "Lo" for c in text)


def poem_couplets(record: Any, report: SkipReport) -> list[tuple[str, str]]:
    """The (first line, second line) couplets of one poem record."""
    paragraphs = record.get("paragraphs") if isinstance(record, dict) else None
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        report.skip("record without a list of string 'paragraphs' (not a poem)")
        return []
    pairs = []
    for sentence in (s.strip() for p in paragraphs for s in SENTENCE_END.split(p)):
        if not sentence:
            continue
        lines = sentence[:-1].split(COMMA) if sentence[-1] in "。！？；" else []
        if len(lines) != 2:
            report.skip("sentence that is not two lines joined by '，'")
        elif len(lines[0]) != len(lines[1]):
            report.skip("couplet with lines of different lengths")
        elif not (_is_hanzi_line(lines[0]) and _is_hanzi_line(lines[1])):
            report.skip("couplet with characters other than hanzi (notes, marks)")
        else:
            pairs.append((lines[0], lines[1]))
    return pairs


def iter_couplets(specs: list[str], report: SkipReport) -> Iterator[list[tuple[str, str]]]:
    """Each poem's couplets (a list per record, in order) from poem record files or directories."""
    for record in iter_records(specs, report):
        yield poem_couplets(record, report)


def write_couplets(specs: list[str], out: str | Path) -> CoupletResult:
    """Write out as JSONL {"source": first line, "target": second line}, one couplet a line
    (atomically: an existing file is replaced only once the new one is complete)."""
    check_output_file(out, [("the poems", spec) for spec in specs])
    report, count, poems = SkipReport(), 0, 0
    lines: list[str] = []
    for pairs in iter_couplets(specs, report):
        poems += bool(pairs)
        count += len(pairs)
        lines.extend(json.dumps({"source": s, "target": t}, ensure_ascii=False) for s, t in pairs)
    if not count:
        detail = "; ".join(report.lines()) or "no records"
        raise GptlabError(f"no couplets found in {' '.join(specs)} ({detail})")
    text = "\n".join(lines) + "\n"
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return CoupletResult(count, poems, report)
