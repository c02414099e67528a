"""Loss plots and the run report: files written, the report holds the run's samples and losses,
runs without an evaluation or without metrics get a clear message."""

import json
import math
import shutil
from html import escape

import pytest

from conftest import assert_clean_error, cli_in_process, run_cli
from gptlab.report.history import read_history, read_samples
from gptlab.report.plot import refresh_loss_plot, write_loss_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _copy(tiny_run, tmp_path, name, keep=lambda m: True, extra=None):
    """A copy of the tiny run whose metrics keep only some records (and gain extra keys)."""
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    records = [{**m, **(extra or {})} for m in _metrics(tiny_run) if keep(m)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in records))
    return run


def test_training_leaves_a_loss_plot(tiny_run):
    data = (tiny_run / "loss.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_a_plotting_failure_only_warns(tmp_path, capsys):
    refresh_loss_plot(tmp_path)  # not a run: must not raise inside the training loop
    assert "warning: could not write" in capsys.readouterr().err


def test_plot_cli_one_run_and_an_overlay(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path, "one")
    (run / "loss.png").unlink()
    done = run_cli("plot", run)
    assert done.returncode == 0, done.stderr
    assert (run / "loss.png").read_bytes().startswith(PNG_MAGIC)
    other = _copy(tiny_run, tmp_path, "other", extra={"lr": 1e-4})
    out = tmp_path / "compare.svg"
    write_loss_plot([run, other], out)
    svg = out.read_text()
    assert "one train loss" in svg and "other val loss" in svg and "other lr" in svg  # both runs, labelled


def test_plot_refuses_bad_requests(tiny_run, tmp_path, capsys):
    assert_clean_error(cli_in_process(capsys, "plot", tiny_run, tiny_run), "--out")
    assert_clean_error(cli_in_process(capsys, "plot", tiny_run, "--out", tmp_path / "x.gif"), "unsupported image type")
    assert_clean_error(cli_in_process(capsys, "plot", tmp_path), "not a gptlab run")


def test_report_holds_samples_losses_and_throughput(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path, "reported", extra={"mfu": 0.0123})
    done = run_cli("report", run)
    assert done.returncode == 0, done.stderr
    page = (run / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    samples = read_samples(run)
    assert [s for s, _ in samples] == [0, 10, 20, 30]
    positions = [page.index(escape(text)) for _, text in samples]
    assert positions == sorted(positions)  # gibberish first, in training order
    last = [m for m in _metrics(run) if "val_loss" in m][-1]
    meta = json.loads((run / "data_meta.json").read_text())["splits"]["val"]
    assert f"{last['val_loss']:.4f}" in page
    assert f"{last['val_loss'] / math.log(2) * meta['tokens'] / meta['bytes']:.4f}" in page
    rates = [m["tokens_per_sec"] for m in _metrics(run) if "tokens_per_sec" in m]
    assert f"last {rates[-1]:,.0f}" in page
    assert "MFU" in page and "1.23%" in page
    assert "n_layer" in page and "position embedding" in page and "tinyshakespeare.txt" in page


def test_report_of_a_run_without_evaluation(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path, "noeval", keep=lambda m: "train_loss" in m)
    done = cli_in_process(capsys, "report", run)
    assert done.returncode == 0, done.stderr
    assert "no evaluation yet" in done.stdout.lower()
    page = (run / "report.html").read_text()
    assert 'id="no-eval"' in page
    assert "MFU (model FLOPs utilisation)" in page  # the trainer logs `mfu`, with or without evaluations
    assert write_loss_plot([run]).read_bytes().startswith(PNG_MAGIC)


def test_report_refuses_runs_without_metrics_and_keeps_the_old_report(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path, "nometrics")
    (run / "report.html").write_text("earlier report")
    (run / "metrics.jsonl").unlink()
    assert_clean_error(cli_in_process(capsys, "report", run), "no metrics yet")
    assert (run / "report.html").read_text() == "earlier report"
    assert_clean_error(cli_in_process(capsys, "plot", run), "no metrics yet")
    assert_clean_error(cli_in_process(capsys, "report", tmp_path / "missing"), "not a gptlab run")


def test_history_final_losses_in_nats_and_bits_per_byte(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path, "bytes")
    meta = json.loads((run / "data_meta.json").read_text())
    meta["splits"]["val"]["bytes"] = meta["splits"]["val"]["tokens"] * 2  # as if 2 bytes per token
    (run / "data_meta.json").write_text(json.dumps(meta))
    finals = {f.split: f for f in read_history(run).final_losses()}
    last = [m for m in _metrics(run) if "val_loss" in m][-1]
    assert finals["val"].step == last["step"] == 30
    assert finals["val"].bits_per_byte == pytest.approx(last["val_loss"] / math.log(2) / 2)
    assert finals["train"].nats == pytest.approx(last["eval_train_loss"])


def test_samples_of_a_resumed_run_keep_one_block_per_step(tmp_path):
    (tmp_path / "samples.txt").write_text(
        "=== step 0 ===\nab\n\n=== step 5 ===\nold\n\n=== step 5 ===\nnew\nline\n\n=== step 10 ===\nc\n\n"
    )
    assert read_samples(tmp_path) == [(0, "ab"), (5, "new\nline"), (10, "c")]
