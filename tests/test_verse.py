"""The verse checker on real poems of the Tang corpus whose forms are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, cli_in_process
from gptlab.posttrain.verse import WEIGHTS, check, reading, score, split_lines


def corpus_poem(path: Path, title: str, author: str) -> str:
    """The text of one poem of the corpus (its paragraphs, one per line)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["title"] == title and record["author"] == author:
                return "\n".join(record["paragraphs"])
    raise AssertionError(f"{title} by {author} is not in the corpus")


def test_five_character_regulated_verse(tang_jsonl):
    # 杜甫《春望》: eight lines of five, even lines rhyme (深 心 金 簪, all -in/-en), a textbook 平仄.
    report = check(corpus_poem(tang_jsonl, "春望", "杜甫"))
    assert report.lines[0] == "國破山河在" and report.chars_per_line == [5] * 8
    assert report.regular and report.form == "五言律诗"
    # 簪 reads zān today (zēn in the Tang): the documented approximation misses its rhyme.
    assert report.rhyme_groups == ["人辰"] * 3 + ["言前"] and report.rhyme == pytest.approx(2 / 3)
    assert report.tones >= 0.8
    assert report.score >= 0.8


def test_seven_character_quatrain(tang_jsonl):
    # 李白《早發白帝城》(traditional characters: 辭 猨 輕 萬): 間 還 山 rhyme on -an.
    report = check(corpus_poem(tang_jsonl, "早發白帝城", "李白"))
    assert report.chars_per_line == [7] * 4 and report.form == "七言绝句"
    assert report.rhyme == 1.0 and report.tones >= 0.7 and report.score >= 0.85


def test_irregular_old_style_poem(tang_jsonl):
    # 李白《將進酒》: lines of 3 to 10 characters, so not regular; its score stays far below regulated verse.
    text = corpus_poem(tang_jsonl, "將進酒", "李白")
    report = check(text)
    assert not report.regular and report.form == "irregular"
    assert {3, 5, 7}.issubset(report.chars_per_line) and max(report.chars_per_line) >= 10
    assert report.score <= WEIGHTS["rhyme"] + WEIGHTS["tones"]
    assert report.score < check(corpus_poem(tang_jsonl, "春望", "杜甫")).score - 0.3


def test_traditional_and_simplified_characters_read_alike():
    assert reading("國") == reading("国") and reading("間") == reading("间")
    assert reading("天") == (("言前",), frozenset({True}))  # tiān: level (1st tone)
    assert reading("水") == (("灰堆",), frozenset({False}))  # shuǐ: oblique (3rd tone)
    # The lost entering tone: 白 (a Middle Chinese -k syllable) reads level today, as the docstring says.
    assert reading("白")[1] == frozenset({True})
    assert reading("看")[1] == frozenset({True, False})  # kān/kàn: either, as poets used it


def test_a_poem_that_breaks_the_rules_scores_lower():
    good = "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。"
    # The same lines with the rhyme words swapped out for words that neither rhyme nor end level.
    no_rhyme = "白日依山盡，黃河入海水。欲窮千里目，更上一層月。"
    assert check(good).rhyme == 1.0 and check(no_rhyme).rhyme == 0.0
    assert check(no_rhyme).tones < check(good).tones
    assert score(no_rhyme) < score(good)


def test_repeating_one_character_is_not_verse():
    report = check("山山山山山，山山山山山。山山山山山，山山山山山。")
    assert report.regular  # the form is kept...
    assert report.rhyme == 0.0  # ...but a character rhymed with itself does not count
    assert report.score < 0.1


def test_lines_are_clauses_or_text_lines():
    assert split_lines("床前明月光，疑是地上霜。\n舉頭望明月\n低頭思故鄉。") == [
        "床前明月光",
        "疑是地上霜",
        "舉頭望明月",
        "低頭思故鄉",
    ]
    assert split_lines("  「春眠」不覺曉！ ") == ["春眠不覺曉"]


@pytest.mark.parametrize("text", ["", "   \n\n", "，。！？", "hello world", "12345\n67890"])
def test_empty_or_garbage_scores_zero(text):
    report = check(text)
    assert report.score == 0.0 and not report.regular
    assert set(report.to_json()) >= {"lines", "chars_per_line", "regular", "rhyme", "tones", "score"}


def test_every_measure_stays_in_the_unit_interval(tang_jsonl):
    with tang_jsonl.open(encoding="utf-8") as f:
        for _, line in zip(range(500), f):
            report = check("\n".join(json.loads(line)["paragraphs"]))
            assert all(0.0 <= v <= 1.0 for v in (report.rhyme, report.tones, report.variety, report.score))


def test_verse_command_prints_one_json_object_per_poem(capsys, tmp_path):
    two = "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。\n\n君不見黃河之水天上來，奔流到海不復回。"
    done = cli_in_process(capsys, "verse", two, "--json")
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["chars_per_line"] for r in reports] == [[5, 5, 5, 5], [10, 7]]
    assert reports[0]["regular"] is True and reports[0]["score"] == 1.0 and reports[1]["regular"] is False
    records = tmp_path / "poems.jsonl"
    records.write_text(
        json.dumps({"paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "床前明月光，疑是地上霜。"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    from_file = cli_in_process(capsys, "verse", records, "--json")
    assert [json.loads(line)["chars_per_line"] for line in from_file.stdout.splitlines()] == [[5] * 4, [5, 5]]
    text = tmp_path / "poems.txt"
    text.write_text(two, encoding="utf-8")
    shown = cli_in_process(capsys, "verse", text)
    assert shown.returncode == 0 and "poem 2:" in shown.stdout and "五言绝句" in shown.stdout


def test_verse_command_refuses_bad_input_in_one_line(capsys, tmp_path):
    (tmp_path / "bytes.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "empty.jsonl").write_text('{"title": "x"}\n[1, 2]\n', encoding="utf-8")
    for source, needle in [("", "no poem"), ("\n\n  \n", "no poem"), (tmp_path / "bytes.txt", "utf-8")]:
        assert_clean_error(cli_in_process(capsys, "verse", source), needle)
    assert_clean_error(cli_in_process(capsys, "verse", tmp_path / "empty.jsonl"), "no poem", "paragraphs")
