"""Shared fixtures: real text from ../shared/data, a small prepared dataset, a CLI runner.

Tests import and run the code of the tree they live in (src/ first on the path), so a checkout
is tested as it is, whatever gptlab may be installed elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a process, and kill it if it has not ended within timeout seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(run: Path, logs: Path, *args: object) -> subprocess.Popen:
    """`gptlab serve RUN --port 0 ARGS` in its own process, its output in logs/stdout and logs/stderr
    (files: a pipe nobody reads would stall a talkative server). One thread: the runs served in tests are
    tiny and the test machine is shared."""
    env = cli_env() | {"OMP_NUM_THREADS": "1"}
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gptlab", "serve", str(run), "--port", "0", *map(str, args)],
            stdout=out,
            stderr=err,
            env=env,
        )


def wait_until_serving(proc: subprocess.Popen, logs: Path, within: float = 120) -> str:
    """The base URL of a server start_server started, once its /health answers (fails if it exits
    or is not up within `within` seconds)."""
    import httpx

    deadline = time.time() + within
    while time.time() < deadline:
        assert proc.poll() is None, (logs / "stderr").read_text()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", (logs / "stdout").read_text())
        if found:
            base = f"http://127.0.0.1:{found.group(1)}"
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"server did not start in {within:.0f} s")


@contextlib.contextmanager
def serving(run: Path, *args: object, logs: Path | None = None) -> Iterator[str]:
    """`gptlab serve RUN --port 0 ARGS` (start_server): its base URL once it answers; stopped after, and
    a server that died while in use fails the test. logs: where its output goes (a temporary folder
    unless given)."""
    with contextlib.ExitStack() as stack:
        if logs is None:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        proc = start_server(run, logs, *args)
        try:
            yield wait_until_serving(proc, logs)
            assert proc.poll() is None, "the server died while in use: " + (logs / "stderr").read_text()[-2000:]
        finally:
            stop(proc)


@contextlib.contextmanager
def interrupted_at(monkeypatch: pytest.MonkeyPatch, step: int) -> Iterator[None]:
    """Within: a run gets SIGINT (what Ctrl-C does: checkpoint, stop) right after it logs its training
    record of `step`; after: runs go on uninterrupted (an exact-resume test's two halves)."""
    from gptlab.train.metrics import MetricsLog

    write = MetricsLog.write

    def write_then_interrupt(self, record):
        write(self, record)
        if record.get("step") == step and "train_loss" in record:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(MetricsLog, "write", write_then_interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(MetricsLog, "write", write)


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
