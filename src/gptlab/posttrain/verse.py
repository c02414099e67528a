"""The verse checker: how closely a poem keeps the forms of classical Chinese verse, as one score.

A poem's lines are its clauses, each closed by ，。！？； (or by the end of a text line); a line's
characters are the ones that are not punctuation or spaces. Three measures, each in [0, 1]:

- regular: 1 when the poem has 4 or 8 lines (a quatrain 绝句 or a regulated verse 律诗), all of 5 or all
  of 7 characters, else 0.
- rhyme: the endings of the even lines (2nd, 4th, ...) should share one rhyme. A character's rhyme
  group is the final (韵母) of any of its readings, read by pypinyin (which knows traditional
  characters) and folded into the thirteen rhyme tracks of modern Mandarin (十三辙), ü joined to u as
  in the classical 魚/虞. That is an approximation of the classical rhyme groups (平水韵): finals have
  moved since the Tang (簪 rhymed with 心 then, not now) and the modern tracks are broader. The
  measure is (k - 1) / (n - 1) for n even lines of which k end in the most common group with distinct
  characters (rhyming a character with itself is a fault, and does not count); 0 for fewer than two.
- tones: the level/oblique pattern (平仄) of regulated verse: within a line the 2nd, 4th (and 6th)
  characters alternate; in a couplet the second line opposes the first at those places (对); the first
  line of a couplet follows the line before it at the 2nd character (粘); even lines end level, odd
  lines after the first end oblique. The measure is the share of these checks passed (a character with a
  level and an oblique reading passes either way, as 可平可仄). Tones are the
  modern ones (1st and 2nd level, 3rd and 4th oblique): the entering tone (入声) was lost in Mandarin,
  and its characters read now in the 1st or 2nd tone (e.g. 白, 國) count wrongly as level. A character
  without a reading (not Chinese) fails every check it takes part in.

score = (0.4 * regular + 0.3 * rhyme + 0.3 * tones) * variety, where variety = min(1, d / (0.6 * n))
for d distinct characters among n: a poem of one character repeated keeps the form but is not verse.

Cheap: readings are cached per character, so reinforcement learning can score thousands of rollouts.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cache

from pypinyin import Style, pinyin

WEIGHTS = {"regular": 0.4, "rhyme": 0.3, "tones": 0.3}
VARIETY_FLOOR = 0.6  # share of distinct characters from which a poem counts as fully varied
# A clause ends at Chinese (full-width) or ASCII sentence punctuation, or at a line break.
_LINE_END = re.compile(r"[，。！？；,.!?;\n]+")

# The thirteen rhyme tracks (十三辙) of modern Mandarin, keyed by pypinyin's strict finals (ü as v).
_TRACKS = {
    "发花": ("a", "ia", "ua"),
    "梭波": ("o", "e", "uo"),
    "乜斜": ("ie", "ve", "ue", "ê"),
    "一七": ("i", "er"),
    "姑苏": ("u", "v"),  # ü with u, as the classical 魚/虞 groups rhyme them (the modern tracks do not)
    "怀来": ("ai", "uai"),
    "灰堆": ("ei", "uei", "ui"),
    "遥条": ("ao", "iao"),
    "油求": ("ou", "iou", "iu"),
    "言前": ("an", "ian", "uan", "van"),
    "人辰": ("en", "in", "uen", "un", "vn"),
    "江阳": ("ang", "iang", "uang"),
    "中东": ("eng", "ing", "ueng", "ong", "iong"),
}
_GROUP_OF_FINAL = {final: track for track, finals in _TRACKS.items() for final in finals}


@dataclass
class VerseReport:
    """What the checker found in one poem (every measure in [0, 1])."""

    lines: list[str]
    chars_per_line: list[int]
    regular: bool
    form: str  # "五言绝句", "七言律诗", ... for a regular poem, else "irregular"
    rhyme_groups: list[str | None]  # the rhyme track of each even line's ending (None: no reading)
    rhyme: float
    tones: float
    variety: float
    score: float

    def to_json(self) -> dict:
        """The report as a JSON-ready object (lines, chars_per_line, regular, rhyme, tones, score, ...)."""
        return asdict(self)


@cache
def reading(char: str) -> tuple[tuple[str, ...], frozenset[bool]]:
    """(rhyme tracks, levels) of one character over its modern readings, the most common first: a
    character with several readings (看 kān/kàn, 斜 xié/xiá) may rhyme and count as level or oblique by
    any of them, as poets used them. ((), frozenset()) for a character pypinyin cannot read (not Chinese)."""
    found = pinyin(
        char, style=Style.FINALS_TONE3, strict=True, heteronym=True, errors="ignore", neutral_tone_with_five=True
    )
    finals = [f for f in (found[0] if found else []) if len(f) >= 2 and f[-1].isdigit()]
    tracks = tuple(dict.fromkeys(_GROUP_OF_FINAL.get(f[:-1], f[:-1]) for f in finals))
    return tracks, frozenset(f[-1] in "12" for f in finals)


def split_lines(text: str) -> list[str]:
    """The poem's lines: clauses closed by ，。！？； or a line break, without punctuation or spaces."""
    lines = []
    for clause in _LINE_END.split(text):
        kept = "".join(c for c in clause if unicodedata.category(c)[0] not in "PZC")
        if kept:
            lines.append(kept)
    return lines


def _form(lines: list[str]) -> str:
    lengths = {len(line) for line in lines}
    if len(lines) not in (4, 8) or lengths not in ({5}, {7}):
        return "irregular"
    return {5: "五言", 7: "七言"}[len(lines[0])] + {4: "绝句", 8: "律诗"}[len(lines)]


def _rhyme(lines: list[str]) -> tuple[list[str | None], float]:
    endings = [line[-1] for line in lines[1::2]]
    tracks = [reading(c)[0] for c in endings]
    # The track most even lines can rhyme on, counting each ending character once.
    counts = Counter(t for c, options in dict(zip(endings, tracks)).items() for t in options)
    if len(endings) < 2 or not counts:
        return [options[0] if options else None for options in tracks], 0.0
    top = counts.most_common(1)[0][0]
    groups = [top if top in options else (options[0] if options else None) for options in tracks]
    return groups, (counts[top] - 1) / (len(endings) - 1)


def _tones(lines: list[str]) -> float:
    """Share of the 平仄 checks of regulated verse that the poem passes (see the module docstring)."""
    levels = [[reading(c)[1] for c in line] for line in lines]
    checks: list[bool] = []

    def differ(a: frozenset[bool], b: frozenset[bool]) -> bool:
        return bool(a and b) and not (a == b and len(a) == 1)

    for i, tones in enumerate(levels):
        keys = list(range(1, len(tones) - 1, 2))  # the 2nd, 4th, 6th... characters, never the last
        checks += [differ(tones[a], tones[b]) for a, b in zip(keys, keys[1:])]
        if i % 2 == 1:
            previous = levels[i - 1]
            checks += [differ(previous[k], tones[k]) for k in keys if k < len(previous) - 1]
            checks.append(True in tones[-1])
        elif i > 0:
            checks.append(False in tones[-1])
            if len(tones) > 2 and len(levels[i - 1]) > 2:
                checks.append(bool(levels[i - 1][1] & tones[1]))
    return sum(checks) / len(checks) if checks else 0.0


def check(text: str) -> VerseReport:
    """Check one poem: its lines, form, rhyme and tone pattern, and the combined score in [0, 1]."""
    lines = split_lines(text)
    chars = "".join(lines)
    form = _form(lines)
    groups, rhyme = _rhyme(lines)
    tones = _tones(lines)
    variety = min(1.0, len(set(chars)) / (VARIETY_FLOOR * len(chars))) if chars else 0.0
    regular = form != "irregular"
    raw = WEIGHTS["regular"] * regular + WEIGHTS["rhyme"] * rhyme + WEIGHTS["tones"] * tones
    return VerseReport(
        lines=lines,
        chars_per_line=[len(line) for line in lines],
        regular=regular,
        form=form,
        rhyme_groups=groups,
        rhyme=rhyme,
        tones=tones,
        variety=variety,
        score=raw * variety,
    )


def score(text: str) -> float:
    """The verse score of one poem in [0, 1] (check(text).score)."""
    return check(text).score
