"""Poem records ({"title", "author", "paragraphs"}, as in the Tang poems) as post-training data.

Instructions: the prompt asks for a poem on the title (a template the user may change), the
response is the poem's lines. Preferences, as TutorialLLM builds them: the prompt of a
five-character poem, chosen its own poem, rejected a poem of another form (seven-character
first, drawn with the seed), so alignment learns to prefer the five-character form. Verse pairs,
for a reward model: two real poems whose titles are of the same kind, the one the verse checker
(posttrain/verse.py) scores higher chosen.
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
from gptlab.posttrain.verse import score

DEFAULT_TEMPLATE = "請用以下題目寫一首詩：{title}"
MAX_FIELD_WIDTH = 1000  # a {title:>N} pads every prompt to N characters: a few lines' worth at most
# The width in a format spec: [[fill]align][sign][z][#][0][width]...
_WIDTH = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)", re.S)
# Chinese (full-width) and ASCII punctuation that ends a line of verse.
_PUNCTUATION = re.compile(r"[，。！？；、,.!?;:：\s]+")
# Verse pairs whose scores differ by less than this are left out: a tie is not a preference.
MIN_SCORE_GAP = 0.1


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


def title_kind(title: str) -> str:
    """The kind of a title: its first character after a Yuefu collection's name ("鼓吹曲辭 將進酒" -> 將),
    the occasion in most Tang titles (送 farewell, 題 inscribed, 登 climbing, 寄 sent to, 春 spring...)."""
    parts = title.split()
    if len(parts) > 1 and parts[0].endswith("辭"):  # 雜曲歌辭, 相和歌辭, ...: the collection, not the title
        parts = parts[1:]
    return next((c for c in parts[0] if c.isalnum()), parts[0][0])  # past a bracketed note: "[擬]送..." -> 擬


def verse_pair_records(poems: list[Poem], template: str = DEFAULT_TEMPLATE, seed: int = 1337) -> list[dict[str, str]]:
    """{"prompt", "chosen", "rejected"} ranked by the verse checker: the poems of each kind of title
    shuffled with the seed and taken two by two (each poem text in one pair at most); the prompt asks for
    the first one's title, the better-scored poem is chosen; pairs closer than MIN_SCORE_GAP are left out."""
    kinds: dict[str, list[Poem]] = {}
    seen: set[str] = set()
    for p in poems:
        if p.text not in seen:  # a poem kept under two titles is one poem: held-out pairs must not share it
            seen.add(p.text)
            kinds.setdefault(title_kind(p.title), []).append(p)
    rng = np.random.default_rng(seed)
    records = []
    for kind in sorted(kinds):  # sorted: the pairs do not depend on the order of the files
        group = kinds[kind]
        order = rng.permutation(len(group)).tolist()
        for a, b in zip(order[0::2], order[1::2]):
            first, second = group[a], group[b]
            s1, s2 = score(first.text), score(second.text)
            if abs(s1 - s2) < MIN_SCORE_GAP or first.text == second.text:
                continue
            chosen, rejected = (first, second) if s1 > s2 else (second, first)
            records.append(
                {"prompt": instruction_prompt(first, template), "chosen": chosen.text, "rejected": rejected.text}
            )
    if not records:
        raise GptlabError(
            "no verse pairs: they need two poems with titles of the same kind whose verse scores differ "
            f"by at least {MIN_SCORE_GAP}"
        )
    return records


def write_jsonl(path: str | Path, records: list[dict[str, str]]) -> None:
    """Write records as JSONL atomically (UTF-8, characters as they are)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def convert(
    paths: list[str],
    instructions: str | None,
    preferences: str | None,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 1337,
    verse_pairs: str | None = None,
) -> tuple[dict[str, int], SkipReport]:
    """`gptlab poem-data`: poem files to an instruction JSONL, a preference JSONL and/or a verse-pair
    JSONL. Returns the number of records written to each, and what was skipped."""
    outputs: dict[str, str | Path | None] = {
        "--instructions": instructions,
        "--preferences": preferences,
        "--verse-pairs": verse_pairs,
    }
    if not any(outputs.values()):
        raise GptlabError("poem-data needs --instructions FILE, --preferences FILE and/or --verse-pairs FILE")
    if not 0 <= seed < 2**32:  # numpy's generators take no negative seed
        raise GptlabError(f"--seed {seed} must be in [0, 2**32)")
    check_template(template)
    check_distinct(outputs)
    for flag, path in outputs.items():
        if path:
            check_output_file(path, [("the poems", p) for p in paths], flag)
    report = SkipReport()
    poems = read_poems(paths, report)
    written: dict[str, int] = {}
    # Build both before writing either: a refusal leaves no half-finished pair of files.
    sft = instruction_records(poems, template) if instructions else None
    dpo = preference_records(poems, template, seed) if preferences else None
    ranked = verse_pair_records(poems, template, seed) if verse_pairs else None
    for path, records in ((instructions, sft), (preferences, dpo), (verse_pairs, ranked)):
        if path and records is not None:
            write_jsonl(path, records)
            written[str(path)] = len(records)
    return written, report
