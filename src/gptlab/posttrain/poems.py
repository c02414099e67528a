"""Poem records ({"title", "author", "paragraphs"}, as in the Tang poems) as post-training data.

Instructions: the prompt asks for a poem on the title (a template the user may change), the
response is the poem's lines. Preferences, as TutorialLLM builds them: the prompt of a
five-character poem, chosen its own poem, rejected a poem of another form (seven-character
first, drawn with the seed), so alignment learns to prefer the five-character form.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.data.corpora import SkipReport, iter_records
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_text
from gptlab.outputs import check_distinct, check_output_file

DEFAULT_TEMPLATE = "請用以下題目寫一首詩：{title}"
MAX_FIELD_WIDTH = 1000  # a {title:>N} pads every prompt to N characters: a few lines' worth at most
# The width in a format spec: [[fill]align][sign][z][#][0][width]...
_WIDTH = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)", re.S)
# Chinese (full-width) and ASCII punctuation that ends a line of verse.
_PUNCTUATION = re.compile(r"[，。！？；、,.!?;:：\s]+")


@dataclass
class Poem:
    """One usable poem record."""

    title: str
    author: str
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def verse_form(text: str) -> str:
    """ "five" or "seven" when every line (between punctuation) has that many characters (regulated
    verse), else "other"."""
    lengths = {len(part) for part in _PUNCTUATION.split(text) if part}
    return {frozenset({5}): "five", frozenset({7}): "seven"}.get(frozenset(lengths), "other")


def read_poems(paths: list[str], report: SkipReport) -> list[Poem]:
    """Every usable poem of the files (the others counted in report, with why)."""
    poems = []
    # The same record reader as prepare and couplets: files, directories, .gz, the built-in tang-poems.
    for record in iter_records(paths, report):
        if not isinstance(record, dict):
            report.skip("record that is not a JSON object")
        elif not (isinstance(record.get("title"), str) and record["title"].strip()):
            report.skip("poem without a 'title' string")
        elif not (
            isinstance(record.get("paragraphs"), list)
            and record["paragraphs"]
            and all(isinstance(p, str) for p in record["paragraphs"])
            and any(p.strip() for p in record["paragraphs"])
        ):
            report.skip("poem without 'paragraphs' (a non-empty list of strings)")
        else:
            author = record["author"] if isinstance(record.get("author"), str) else ""
            poems.append(Poem(record["title"].strip(), author, [p for p in record["paragraphs"] if p.strip()]))
    if not poems:
        raise GptlabError(f"no usable poem records in {', '.join(paths)} ({'; '.join(report.lines()) or 'empty'})")
    return poems


def check_template(template: str) -> None:
    """Refuse, before any poem is read, a template whose output is not bounded by its text and the
    poem's: a field width ({title:>99999999}) would make every prompt that long, and a width taken
    from another field ({title:{author}}) is one the poems choose."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise GptlabError(f"prompt template {template!r} is not usable: {exc}") from None
    for _, name, spec, _ in fields:
        if name is None or not spec:
            continue
        if "{" in spec:
            raise GptlabError(f"prompt template {template!r}: a format spec may not hold another field")
        width = _WIDTH.match(spec)
        if width and width.group(1) and int(width.group(1)) > MAX_FIELD_WIDTH:
            raise GptlabError(
                f"prompt template {template!r}: field width {int(width.group(1)):,} is over {MAX_FIELD_WIDTH:,}"
            )


def instruction_prompt(poem: Poem, template: str = DEFAULT_TEMPLATE) -> str:
    """The user's request for this poem ({title} and {author} are filled in)."""
    try:
        return template.format(title=poem.title, author=poem.author)
    except (KeyError, IndexError, ValueError) as exc:
        raise GptlabError(
            f"prompt template {template!r} is not usable: it may name only {{title}} and "
            f"{{author}} ({type(exc).__name__}: {exc})"
        ) from None


def instruction_records(poems: list[Poem], template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """{"prompt", "response"} for every poem."""
    return [{"prompt": instruction_prompt(p, template), "response": p.text} for p in poems]


def preference_records(poems: list[Poem], template: str = DEFAULT_TEMPLATE, seed: int = 1337) -> list[dict[str, str]]:
    """{"prompt", "chosen", "rejected"}: each five-character poem's prompt, the poem itself chosen,
    a poem of another form rejected (a seven-character one when there are any)."""
    forms = [verse_form(p.text) for p in poems]
    five = [p for p, f in zip(poems, forms) if f == "five"]
    others = [p for p, f in zip(poems, forms) if f == "seven"] or [p for p, f in zip(poems, forms) if f != "five"]
    if not five or not others:
        raise GptlabError(
            "preference pairs need five-character poems and poems of another form; "
            f"found {len(five)} five-character and {len(others)} others"
        )
    picks = np.random.default_rng(seed).integers(0, len(others), size=len(five))
    return [
        {"prompt": instruction_prompt(p, template), "chosen": p.text, "rejected": others[i].text}
        for p, i in zip(five, picks.tolist())
    ]


def write_jsonl(path: str | Path, records: list[dict[str, str]]) -> None:
    """Write records as JSONL atomically (UTF-8, characters as they are)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def convert(
    paths: list[str],
    instructions: str | None,
    preferences: str | None,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 1337,
) -> tuple[dict[str, int], SkipReport]:
    """`gptlab poem-data`: poem files to an instruction JSONL and/or a preference JSONL.
    Returns the number of records written to each, and what was skipped."""
    if not instructions and not preferences:
        raise GptlabError("poem-data needs --instructions FILE and/or --preferences FILE")
    if not 0 <= seed < 2**32:  # numpy's generators take no negative seed
        raise GptlabError(f"--seed {seed} must be in [0, 2**32)")
    check_template(template)
    check_distinct({"--instructions": instructions, "--preferences": preferences})
    for flag, path in (("--instructions", instructions), ("--preferences", preferences)):
        if path:
            check_output_file(path, [("the poems", p) for p in paths], flag)
    report = SkipReport()
    poems = read_poems(paths, report)
    written: dict[str, int] = {}
    # Build both before writing either: a refusal leaves no half-finished pair of files.
    sft = instruction_records(poems, template) if instructions else None
    dpo = preference_records(poems, template, seed) if preferences else None
    if sft is not None:
        write_jsonl(instructions, sft)  # type: ignore[arg-type]
        written[str(instructions)] = len(sft)
    if dpo is not None:
        write_jsonl(preferences, dpo)  # type: ignore[arg-type]
        written[str(preferences)] = len(dpo)
    return written, report
