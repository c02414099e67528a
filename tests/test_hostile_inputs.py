"""Inputs that used to end in a traceback end in one line: non-finite and out-of-range config numbers, a
truncated or corrupt .gz corpus, lone surrogates in pair records, a negative poem-data seed, a full disk
during export."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import pytest
from safetensors import SafetensorError

from conftest import assert_clean_error, cli_in_process
from gptlab.config import RunConfig, apply_overrides
from gptlab.errors import GptlabError


@pytest.mark.parametrize(
    "override, needle",
    [
        ("epochs=1e308", "epochs=1e+308 must be at most"),
        ("epochs=nan", "epochs=nan is not a finite number"),
        ("lr=inf", "lr=inf is not a finite number"),
        ("logit_softcap=nan", "logit_softcap=nan is not a finite number"),
        ("rope_base=1e999", "rope_base=inf"),
        ("n_layer=1e999", "n_layer=inf is not a whole number"),
        ("n_layer=2.5e0", "is not a whole number"),
        ("max_steps=1e30", "max_steps=1000000000000000019884624838656 is out of range"),
        ("n_embd=99999999999", "n_embd=99999999999 must be at most"),
        ("vocab_size=99999999999", "vocab_size=99999999999 must be at most"),
    ],
)
def test_every_numeric_field_is_finite_and_in_range(override, needle):
    cfg = RunConfig()
    with pytest.raises(GptlabError) as err:
        apply_overrides(cfg, [override])
        cfg.validate()
    assert needle in str(err.value)


def test_finetune_refuses_absurd_epochs_in_one_line(tiny_run, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n", encoding="utf-8")
    for epochs in ("1e308", "nan"):
        proc = cli_in_process(
            capsys, "finetune", "--from", tiny_run, "--data", data, "--out", tmp_path / "ft", "--epochs", epochs
        )
        assert_clean_error(proc, "epochs=")
        assert not (tmp_path / "ft" / "config.json").exists()


def gz_cut(path: Path, data: bytes, how: str) -> Path:
    packed = gzip.compress(data)
    if how == "truncated":
        packed = packed[: len(packed) // 2]
    else:  # corrupt: bytes flipped in the middle of the deflate stream
        middle = len(packed) // 2
        packed = packed[:middle] + bytes(b ^ 0xFF for b in packed[middle : middle + 16]) + packed[middle + 16 :]
    path.write_bytes(packed)
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize(
    "name, data",
    [("t.txt.gz", b"hello world " * 20_000), ("r.jsonl.gz", b'{"text": "hello"}\n' * 10_000)],
)
def test_a_damaged_gz_corpus_is_one_line(name, data, how, tmp_path, capsys):
    corpus = gz_cut(tmp_path / name, data, how)
    proc = cli_in_process(capsys, "prepare", corpus, "--out", tmp_path / "d", "--workers", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"cannot read {corpus}" in proc.stderr.splitlines()[-1]


def test_pair_records_with_lone_surrogates_are_one_line(tmp_path, capsys):
    records = tmp_path / "p.jsonl"
    lines = [json.dumps({"source": "ab\ud800", "target": "cd"}), json.dumps({"source": "ab", "target": "cd"})]
    records.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = cli_in_process(capsys, "prepare", "--pairs", records, "--out", tmp_path / "d")
    assert_clean_error(proc, "line 1", "lone surrogate")


def test_poem_data_refuses_a_negative_seed(tmp_path, capsys):
    poems = tmp_path / "poems.jsonl"
    five = {"title": "a", "paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]}
    seven = {"title": "b", "paragraphs": ["朝辞白帝彩云间，千里江陵一日还。", "两岸猿声啼不住，轻舟已过万重山。"]}
    poems.write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in (five, seven)) + "\n", encoding="utf-8")
    proc = cli_in_process(capsys, "poem-data", poems, "--preferences", tmp_path / "p.jsonl", "--seed", "-1")
    assert_clean_error(proc, "--seed -1")
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "failure",
    [
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_a_full_disk_during_export_is_one_line(failure, tiny_run, tmp_path, capsys, monkeypatch):
    from gptlab.interop import export

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(export, "save_file", full)
    proc = cli_in_process(capsys, "export", tiny_run, "--out", tmp_path / "hf")
    assert_clean_error(proc, "No space left on device")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.export-*"))
