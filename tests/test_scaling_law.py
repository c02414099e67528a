"""The scaling law: the fit recovers a known law, and the sweep writes its points, plot and figures."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli_env
from gptlab.errors import GptlabError
from gptlab.scaling.fit import ScalingLaw, compute_optimal, fit_scaling_law

TRUE = ScalingLaw(E=1.3, A=40.0, alpha=0.34, B=400.0, beta=0.29)


def synthetic_points(law: ScalingLaw, noise: float, seed: int = 0):
    """An isoFLOP grid like the sweep's (5 sizes x 4 budgets, D = C / 6N) with multiplicative noise."""
    rng = np.random.default_rng(seed)
    n = np.repeat([1e4, 3e4, 1e5, 3e5, 1e6], 4)
    c = np.tile([1e12, 2e12, 4e12, 8e12], 5)
    d = c / (6 * n)
    return n, d, law.loss(n, d) * (1 + noise * rng.standard_normal(n.size))


def test_fit_recovers_the_exponents_of_a_known_law_from_noisy_points():
    n, d, loss = synthetic_points(TRUE, noise=0.002)
    law = fit_scaling_law(n, d, loss)
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.06)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.06)
    assert law.E == pytest.approx(TRUE.E, abs=0.15)
    # Extrapolation to a budget twice the largest, the way the benchmark checks itself.
    n_new, d_new = 3e5, 16e12 / (6 * 3e5)
    assert law.loss(n_new, d_new) == pytest.approx(TRUE.loss(n_new, d_new), rel=0.01)


def test_fit_is_exact_on_noiseless_points():
    n, d, loss = synthetic_points(TRUE, noise=0.0)
    law = fit_scaling_law(n, d, loss)
    assert law.rmse < 1e-3
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.01)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.01)


def test_compute_optimal_size_matches_the_closed_form():
    # With C = 6 N D: N_opt = (alpha A / (beta B))^(1/(alpha+beta)) * (C/6)^(beta/(alpha+beta)).
    c = 1e13
    expected = (TRUE.alpha * TRUE.A / (TRUE.beta * TRUE.B)) ** (1 / (TRUE.alpha + TRUE.beta)) * (
        c / 6
    ) ** TRUE.optimal_size_exponent
    n_opt, loss = compute_optimal(TRUE, c, lambda n: 6 * n, (1e2, 1e9))
    assert n_opt == pytest.approx(expected, rel=0.01)
    assert loss == pytest.approx(TRUE.loss(expected, c / (6 * expected)), rel=1e-4)


def test_fit_refuses_too_few_points():
    with pytest.raises(GptlabError, match="at least 5 points"):
        fit_scaling_law([1e4, 1e5, 1e4, 1e5], [1e6, 1e6, 2e6, 2e6], [2.0, 1.9, 1.8, 1.7])


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling_law.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )


TINY = [
    "--sizes",
    "1x8,1x16",
    "--budgets",
    "1e8,2e8,4e8",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-batches",
    "2",
]
REQUIRED = ("alpha", "beta", "predicted_val_loss", "measured_val_loss", "prediction_error_pct")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, char_dataset: Path):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_benchmark(*TINY, "--corpus", str(char_dataset), "--out", str(out))


def test_sweep_writes_every_point_the_plot_and_the_figures(tiny_sweep):
    out, done = tiny_sweep
    assert done.returncode == 0, done.stderr[-2000:]
    points = [json.loads(line) for line in (out / "scaling_law.jsonl").read_text().splitlines()]
    assert [p["role"] for p in points] == ["fit"] * 6 + ["holdout"]
    assert {(p["size"], p["budget_flops"]) for p in points[:6]} == {
        (s, b) for s in ("1x8", "1x16") for b in (1e8, 2e8, 4e8)
    }
    for p in points:  # each run spent its budget (to the nearest step) and was scored on val data
        assert p["flops"] == p["tokens"] * p["train_flops_per_token"]
        assert abs(p["flops"] - p["budget_flops"]) <= p["train_flops_per_token"] * 4 * 16 / 2 + 1
        assert 0 < p["val_loss"] < math.log(65) + 0.5
    # The bigger model counts more non-embedding parameters, and the held-out run is outside the fit.
    sizes = {p["size"]: p["non_embedding_params"] for p in points}
    assert sizes["1x16"] > 2 * sizes["1x8"]
    assert points[-1]["budget_flops"] == 8e8
    assert (out / "scaling_law.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(math.isfinite(last[k]) for k in REQUIRED)
    assert last["measured_val_loss"] == pytest.approx(points[-1]["val_loss"], abs=1e-4)
    assert last["prediction_error_pct"] == pytest.approx(
        100 * (last["predicted_val_loss"] - last["measured_val_loss"]) / last["measured_val_loss"], abs=0.05
    )
    assert json.loads((out / "scaling_law.json").read_text()) == last
    # Every point was printed as a JSON line too.
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"role"')]
    assert printed == points


def test_sweep_rerun_reuses_the_points_it_has(tiny_sweep, char_dataset: Path):
    out, first = tiny_sweep
    again = run_benchmark(*TINY, "--corpus", str(char_dataset), "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "--- fit" not in again.stdout and "--- holdout" not in again.stdout
    assert len((out / "scaling_law.jsonl").read_text().splitlines()) == 7  # nothing appended twice
    assert (
        json.loads(again.stdout.strip().splitlines()[-1])["measured_val_loss"]
        == json.loads(first.stdout.strip().splitlines()[-1])["measured_val_loss"]
    )


def _benchmark_main():
    spec = importlib.util.spec_from_file_location("scaling_law_benchmark", ROOT / "benchmarks" / "scaling_law.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "2y64,4x128"], "is not LAYERSxWIDTH"),
        (["--sizes", "2x64x3,4x128"], "divisible by the heads"),
        (["--budgets", "1e12,-5"], "must be a positive number"),
        (["--budgets", "lots"], "is not a number of FLOPs"),
        (["--sizes", "2x64", "--budgets", "1e12,2e12"], "at least 2 distinct sizes"),
        (["--holdout-budget", "1e12"], "would be one of the fitted points"),
        (["--block-size", "0"], "--block-size must be at least 1"),
        (["--threads", "-1"], "--threads must be at least 0"),
        (["--set", "colour=blue"], "unknown config field 'colour'"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags_give_one_error_line_and_a_nonzero_exit(args, message, char_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["scaling_law.py", *args, "--corpus", str(char_dataset), "--out", str(tmp_path / "out")]
    )
    with pytest.raises(SystemExit) as stopped:
        _benchmark_main()()
    assert stopped.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("scaling_law: error:"), err
    assert not (tmp_path / "out" / "scaling_law.jsonl").exists()  # refused before any run


def test_gptlab_sweep_command_refuses_a_bad_size_in_one_line(tmp_path):
    from conftest import run_cli

    done = run_cli("sweep", "--sizes", "4x128x3,2x64", "--out", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "gptlab: error: size '4x128x3': layers, width and heads must be "
        "positive and the width divisible by the heads (128 by 3)"
    ]
