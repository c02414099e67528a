"""Every subcommand's arguments: options and positional words in any order, and no argument list,
however odd, ends in a traceback (property-based, with hypothesis)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words naming the subcommand, its parser) for every subcommand, nested ones (bench train) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if nested:
                    yield from subcommands(sub, (*prefix, name))
                else:
                    yield (*prefix, name), sub


COMMANDS = list(subcommands(build_parser()))


def test_every_command_is_covered():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {
        "train",
        "tokenize",
        "prepare",
        "bench train",
        "import",
        "finetune",
        "poem-data",
        "verse",
        "reward",
        "step",
        "rl",
    } <= names
    assert len(names) == 23


def _value(action: argparse.Action) -> str:
    """A value this option's type takes."""
    if action.choices:
        return str(list(action.choices)[-1])
    return {int: "3", float: "0.5"}.get(action.type, "V")  # type: ignore[arg-type]


# Commands with positional words (sweep has none: nothing for its options to mix with).
MIXED = [(w, p) for w, p in COMMANDS if any(not a.option_strings for a in p._actions)]


def test_only_commands_without_positional_words_are_left_out_of_the_mixing_test():
    assert {" ".join(w) for w, _ in COMMANDS} - {" ".join(w) for w, _ in MIXED} == {"sweep"}


@pytest.mark.parametrize("words,parser", MIXED, ids=[" ".join(w) for w, _ in MIXED])
def test_options_and_positional_words_mix_in_any_order(words, parser):
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]
    chosen = [a for a in options if a.required] + [a for a in options if not a.required][:1]
    # Each positional word first, then the options, then a second word for a positional that takes many.
    argv = [*words, *(f"P{i}" for i in range(len(positionals)))]
    for action in chosen:
        argv += [action.option_strings[-1], _value(action)]
    many = positionals[-1].nargs in ("*", "+")
    argv += ["LAST=1"] if many else []
    args = build_parser().parse_args(argv)
    for i, action in enumerate(positionals):
        expected = [f"P{i}"] if action.nargs in ("*", "+") else f"P{i}"
        if many and action is positionals[-1]:
            expected = [f"P{i}", "LAST=1"]
        assert getattr(args, action.dest) == expected, action.dest
    for action in chosen:
        value = _value(action)
        assert getattr(args, action.dest) in (value, action.type(value) if callable(action.type) else value)


def test_the_examples_from_the_issue_parse():
    parser = build_parser()
    args = parser.parse_args("train --data D --out R --preset cpu-tiny n_layer=2 --max-steps 2 eval_interval=1".split())
    assert args.overrides == ["n_layer=2", "eval_interval=1"] and args.max_steps == 2
    args = parser.parse_args(["tokenize", "RUN", "--json", "TEXT"])
    assert (args.run, args.text, args.json) == ("RUN", "TEXT", True)


# --- property-based: any argument list ends in 0, a one-line error or a usage error -----------------

VALUES = [
    "0", "-1", "1", "2", "65537", "99999999999999999999", "nan", "inf", "-inf", "1e308", "1e-300", "0.5",
    "-", "", " ", "\n", "=", "x=1", "n_layer=0", "n_embd=-1", "lr=nan", "block_size=0", "max_steps=1e308",
    "device=cpu", "arch=encdec", "beta=-1", "--", "{title:>99999999}", "{author}", "ROMEO:", "秦川雄帝宅",
    "\ud800", "a" * 300,
]  # fmt: skip


def _paths(root: Path) -> list[str]:
    """Paths that are no run, dataset, checkpoint or corpus: what each command must refuse in one line."""
    (root / "empty").mkdir(exist_ok=True)
    (root / "foreign").mkdir(exist_ok=True)
    (root / "foreign" / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "foreign" / "notes.txt").write_text("mine")
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "bad.jsonl").write_text('{"a": 1}\n[1, 2\n')
    return [str(root / name) for name in ("empty", "foreign", "blob.bin", "bad.jsonl", "missing", "out/new")]


# Options that would start real work on a valid value are pinned last, where the last one wins: no
# training, download or server starts (sweep would train on its default corpus).
PINNED = {"sweep": ["--corpus", "/nonexistent/corpus.txt"]}


def _check_outcome(code: object, out: str, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1, 2, 130), (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("gptlab: error: "), err
    if code == 2:  # argparse's usage error, or no command given
        assert not lines or lines[-1].startswith("gptlab") or "usage:" in err or "usage:" in out, err


@pytest.mark.parametrize("words,parser", COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_no_argument_list_ends_in_a_traceback(words, parser, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))  # never the user's cache
    monkeypatch.chdir(tmp_path)
    options = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
    pool = st.sampled_from(options + VALUES + _paths(tmp_path))
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":"), max_size=12)

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(st.one_of(pool, text), max_size=8))
    def check(argv: list[str]) -> None:
        capsys.readouterr()
        try:
            main([*words, *argv, *PINNED.get(words[0], [])])
            code: object = 0
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        _check_outcome(code, out, err)

    check()
