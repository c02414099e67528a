"""Shared fixtures: real text from ../shared/data, a small prepared dataset, a CLI runner.

Tests import and run the code of the tree they live in (src/ first on the path), so a checkout
is tested as it is, whatever gptlab may be installed elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data; its absence is a failure, not a skip."""
    path = SHARED_DATA / name
    assert path.is_file(), f"test data missing: {path} (../shared/data must sit beside the checkout)"
    return path


@pytest.fixture(scope="session")
def shakespeare_txt() -> Path:
    return shared_file("tinyshakespeare.txt")


@pytest.fixture(scope="session")
def tang_jsonl() -> Path:
    return shared_file("tang_poems.jsonl")


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory: pytest.TempPathFactory, shakespeare_txt: Path) -> Path:
    """tinyshakespeare prepared with the char tokenizer (shared by tests that only read it)."""
    from gptlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    prepare([str(shakespeare_txt)], out, "char")
    return out


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m gptlab ARGS...` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd,
    )


def popen_cli(*args: str, **kwargs) -> subprocess.Popen:
    """Start `python -m gptlab ARGS...` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab", *map(str, args)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def cli_in_process(capsys: pytest.CaptureFixture, *args: object) -> subprocess.CompletedProcess:
    """`gptlab ARGS...` in this process (no second torch start-up), with its exit code and output."""
    capsys.readouterr()
    from gptlab.cli import main as gptlab_main

    with pytest.raises(SystemExit) as exit_:
        gptlab_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_.value.code, out, err)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, f"expected failure, got success:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, char_dataset: Path) -> Path:
    """A briefly trained run (evals, samples, checkpoints, metrics) shared by tests that only read it."""
    from gptlab.config import build_config
    from gptlab.train.trainer import train

    cfg = build_config(
        "cpu-tiny",
        None,
        [
            "n_layer=2",
            "n_head=2",
            "n_embd=32",
            "block_size=32",
            "batch_size=8",
            "eval_batches=2",
            "max_steps=30",
            "eval_interval=10",
            "checkpoint_interval=15",
            "log_interval=2",
            "sample_tokens=30",
            "lr=1e-2",
            "warmup_steps=5",
            "device=cpu",
        ],
    )
    cfg.data = str(char_dataset)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(cfg, run)
    return run


@pytest.fixture(scope="session")
def bpe_dataset(tmp_path_factory: pytest.TempPathFactory, shakespeare_txt: Path, tang_jsonl: Path) -> Path:
    """tinyshakespeare and 300 Tang poems prepared with a small byte-level BPE (shared, read only)."""
    from gptlab.data.prepare import prepare

    root = tmp_path_factory.mktemp("bpe")
    poems = root / "poems.jsonl"
    poems.write_text("\n".join(tang_jsonl.read_text(encoding="utf-8").splitlines()[:300]), encoding="utf-8")
    out = root / "mixed-bpe"
    prepare([str(shakespeare_txt), str(poems)], out, "bpe", tokenizer_options={"vocab_size": 600}, progress=False)
    return out


@pytest.fixture(autouse=True)
def precision_measured_as_a_tie(monkeypatch: pytest.MonkeyPatch) -> None:
    """precision=auto and muon_precision=auto resolve to fp32 in tests that train in this process: the
    timings of fp32 against bf16 (a model's training step, Muon's orthogonalisation) are replaced by
    ties, so what a test asserts does not hang on this machine's bfloat16 units or its load. Tests of
    the choice pass their own measurement; commands in subprocesses measure for real."""
    import gptlab.precision
    import gptlab.train.muon

    monkeypatch.setattr(gptlab.precision, "time_training_step", lambda model, batch_size, block_size: (1.0, 1.0))
    monkeypatch.setattr(gptlab.train.muon, "time_newton_schulz", lambda stacks: (1.0, 1.0))
