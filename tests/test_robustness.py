"""Bad states a user can end up in (a killed process, a re-prepared dataset, a wrong --out) end in
one clear line or are handled, and never lose what was already written."""

import json
import shutil

import pytest

from conftest import assert_clean_error, cli_in_process
from gptlab.fileio import atomic_write_group
from gptlab.runs import weights_path

SMALL = [
    "n_layer=1",
    "n_head=2",
    "n_embd=16",
    "block_size=16",
    "batch_size=4",
    "eval_batches=2",
    "sample_tokens=8",
    "device=cpu",
]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_a_failed_group_write_changes_no_file(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")

    def fail(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_group([(a, lambda tmp: open(tmp, "w").write("new a")), (b, fail)])
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_training_on_a_dataset_without_val_split(tmp_path, shakespeare_txt, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli_in_process(capsys, "prepare", shakespeare_txt, "--out", data, "--val-fraction", "0").returncode == 0
    done = cli_in_process(capsys, "train", "--data", data, "--out", run, "--max-steps", "3", *SMALL)
    assert done.returncode == 0, done.stderr
    evals = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_train_loss" in m]
    assert evals and all("val_loss" not in m for m in evals)


def test_resume_refuses_a_dataset_with_another_tokenizer(run_copy, tmp_path, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    data = tmp_path / "other-data"
    shutil.copytree(cfg["data"], data)
    tok = json.loads((data / "tokenizer.json").read_text())
    tok["chars"][-1] = "\u00e9"  # same size, other characters (so other ids)
    (data / "tokenizer.json").write_text(json.dumps(tok))
    cfg["data"] = str(data)
    (run_copy / "config.json").write_text(json.dumps(cfg))
    before = (run_copy / "tokenizer.json").read_bytes()
    assert_clean_error(cli_in_process(capsys, "train", "--resume", run_copy), "another tokenizer")
    assert (run_copy / "tokenizer.json").read_bytes() == before


def test_corrupt_optimizer_state_is_one_line(run_copy, capsys):
    (weights_path(run_copy).parent / "train_state.pt").write_bytes(b"\x80\x04garbage")
    assert_clean_error(cli_in_process(capsys, "train", "--resume", run_copy, "--max-steps", "40"), "corrupt checkpoint")


def test_corrupt_tokenizer_file_is_one_line(run_copy, capsys):
    (run_copy / "tokenizer.json").write_text('{"kind": "char"}')
    assert_clean_error(cli_in_process(capsys, "sample", run_copy, "--prompt", "a"), "tokenizer file", "corrupt")


def test_partial_last_metrics_line_is_tolerated(run_copy, capsys):
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "train_lo')  # a process killed mid-write
    assert cli_in_process(capsys, "report", run_copy).returncode == 0
    done = cli_in_process(capsys, "train", "--resume", run_copy, "--max-steps", "32")
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 32 and 31 not in steps[:-1]


def test_prepare_refuses_to_write_into_a_run(run_copy, shakespeare_txt, capsys):
    before = (run_copy / "tokenizer.json").read_bytes()
    assert_clean_error(cli_in_process(capsys, "prepare", shakespeare_txt, "--out", run_copy), "not a dataset directory")
    assert (run_copy / "tokenizer.json").read_bytes() == before


def test_vocab_size_with_the_char_tokenizer_is_one_line(shakespeare_txt, tmp_path, capsys):
    assert_clean_error(
        cli_in_process(capsys, "prepare", shakespeare_txt, "--out", tmp_path / "d", "--vocab-size", "500"),
        "applies to the bpe tokenizer",
    )
