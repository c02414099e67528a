"""The command line as a user runs it: end to end on real text, interrupt and resume, bad inputs."""

import json
import signal
import time

import pytest

from conftest import assert_clean_error, popen_cli, run_cli
from gptlab.runs import weights_path

# A small but real model: trains a few hundred steps in seconds on 2 cores.
SMALL = [
    "n_layer=2",
    "n_head=2",
    "n_embd=48",
    "block_size=32",
    "batch_size=16",
    "eval_batches=4",
    "log_interval=1",
    "sample_tokens=40",
    "warmup_steps=10",
]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_lowers_val_loss_and_samples(tmp_path, shakespeare_txt):
    data, run = tmp_path / "data", tmp_path / "run"
    prep = run_cli("prepare", shakespeare_txt, "--tokenizer", "char", "--out", data)
    assert prep.returncode == 0, prep.stderr
    assert "characters: 1,115,394" in prep.stdout and "vocabulary size: 65" in prep.stdout
    train = run_cli(
        "train",
        "--data",
        data,
        "--out",
        run,
        "--preset",
        "cpu-small",
        "--max-steps",
        "300",
        "eval_interval=150",
        "lr=3e-3",
        *SMALL,
    )
    assert train.returncode == 0, train.stderr
    assert "parameters:" in train.stdout and "token embedding:" in train.stdout and "blocks:" in train.stdout
    evals = [m for m in metrics(run) if "val_loss" in m]
    assert [m["step"] for m in evals] == [0, 150, 300]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # from ~ln(65)=4.17 to well below
    logged = [m for m in metrics(run) if "train_loss" in m]
    assert {"step", "train_loss", "lr", "tokens_per_sec", "elapsed_s"} <= set(logged[-1])
    assert (run / "samples.txt").read_text().count("=== step") == 3
    for name in ("config.json", "tokenizer.json"):
        assert (run / name).is_file(), name
    for name in ("model.safetensors", "train_state.pt", "train_state.json", "manifest.json"):
        assert (run / "checkpoints" / "step-0000300" / name).is_file(), name
    assert weights_path(run) == run / "checkpoints" / "step-0000300" / "model.safetensors"

    sample = run_cli("sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "80", "--seed", "3")
    again = run_cli("sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "80", "--seed", "3")
    other = run_cli("sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "80", "--seed", "4")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) == len("ROMEO:") + 80 + 1
    assert sample.stdout == again.stdout != other.stdout
    greedy = [
        run_cli(
            "sample", run, "--prompt", "KING", "--temperature", "0", "--max-new-tokens", "50", "--num-samples", "2"
        ).stdout
    ]
    chunks = greedy[0].split("--- sample 2/2 ---\n")
    assert chunks[0].split("\n", 1)[1] == chunks[1]  # greedy ignores the seed: both samples equal


def test_sigint_then_resume_matches_uninterrupted(tmp_path, char_dataset):
    common = [
        "--data",
        char_dataset,
        "--preset",
        "cpu-small",
        "--max-steps",
        "500",
        *SMALL,
        "dropout=0.1",
        "eval_interval=100",
        "checkpoint_interval=1000",
    ]
    whole = run_cli("train", "--out", tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "cut"
    proc = popen_cli("train", "--out", run, *common)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and any(m.get("step", 0) >= 30 for m in metrics(run)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved at step" in out
    cut_step = json.loads((weights_path(run).parent / "train_state.json").read_text())["step"]
    assert 30 <= cut_step < 500

    resumed = run_cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    expected = {m["step"]: m for m in metrics(tmp_path / "whole")}
    got = {m["step"]: m for m in metrics(run)}
    assert sorted(got) == sorted(expected)
    for step, m in expected.items():
        for key in ("train_loss", "val_loss", "lr"):
            if key in m:
                assert got[step][key] == pytest.approx(m[key], rel=1e-5, abs=1e-6), (step, key)
    assert (run / "samples.txt").read_text().split("=== step 500 ===")[1] == (
        tmp_path / "whole" / "samples.txt"
    ).read_text().split("=== step 500 ===")[1]


def test_training_into_an_existing_run_is_refused_and_keeps_it(tmp_path, char_dataset):
    run = tmp_path / "run"
    first = run_cli("train", "--data", char_dataset, "--out", run, "--max-steps", "5", *SMALL)
    assert first.returncode == 0, first.stderr
    before = weights_path(run).read_bytes()
    again = run_cli("train", "--data", char_dataset, "--out", run, "--max-steps", "5", *SMALL)
    assert_clean_error(again, "already holds a run")
    assert weights_path(run).read_bytes() == before


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    return tmp_path


@pytest.mark.parametrize(
    "args, needles",
    [
        (["prepare", "{tmp}/nope.txt", "--out", "{tmp}/d"], ["corpus not found", "nope.txt"]),
        (["prepare", "{tmp}/empty.txt", "--out", "{tmp}/d"], ["has no text"]),
        (["prepare", "{tmp}/binary.txt", "--out", "{tmp}/d"], ["not UTF-8"]),
        (["prepare", "{tmp}/empty.txt", "--tokenizer", "wordpiece", "--out", "{tmp}/d"], ["unknown tokenizer"]),
        (["train", "--data", "{data}", "--out", "{tmp}/r", "--preset", "gpt5"], ["unknown preset 'gpt5'"]),
        (
            ["train", "--data", "{data}", "--out", "{tmp}/r", "n_embd=100", "n_head=3"],
            ["n_embd=100 is not divisible by n_head=3"],
        ),
        (["train", "--data", "{tmp}", "--out", "{tmp}/../r"], ["not a prepared dataset"]),
        (["train", "--data", "{data}", "--out", "{tmp}/r", "sample_prompt=ROMEO ✓"], ["'✓'"]),
        (["sample", "{tmp}", "--prompt", "hi"], ["is not a gptlab run"]),
        (["train", "--resume", "{tmp}"], ["not a resumable gptlab run"]),
        (["info", "--preset", "huge"], ["unknown preset"]),
    ],
)
def test_bad_input_is_one_clear_line(bad_inputs, char_dataset, args, needles):
    args = [a.format(tmp=bad_inputs, data=char_dataset) for a in args]
    assert_clean_error(run_cli(*args), *needles)


def test_prompt_outside_char_vocabulary_names_the_characters(tmp_path, char_dataset):
    run = tmp_path / "run"
    assert run_cli("train", "--data", char_dataset, "--out", run, "--max-steps", "2", *SMALL).returncode == 0
    proc = run_cli("sample", run, "--prompt", "Hello ✓ 世")
    assert_clean_error(proc, "'✓'", "'世'")
    assert proc.stdout == ""  # nothing printed before the error


def test_failed_prepare_keeps_the_existing_dataset(tmp_path, shakespeare_txt, bad_inputs):
    out = tmp_path / "d"
    assert run_cli("prepare", shakespeare_txt, "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_clean_error(run_cli("prepare", bad_inputs / "binary.txt", "--out", out), "not UTF-8")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
