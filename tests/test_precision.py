"""precision=auto on the CPU: the choice follows the measurement (timer replaced), the chosen precision
is recorded in the run and said on the start-of-training line, and bf16 autocast training on the CPU
follows fp32's loss curve."""

from __future__ import annotations

import json

import pytest
import torch

import gptlab.precision
from gptlab.config import build_config
from gptlab.model import build_model
from gptlab.precision import BF16_MARGIN, choose_precision, precision_for, product_shapes, time_products

CPU = torch.device("cpu")
SHAPES = ((64, 16, 48),)


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"),
    [(1.0, 0.25, "bf16"), (1.0, 1.0 / BF16_MARGIN, "bf16"), (1.0, 0.9, "fp32"), (1.0, 300.0, "fp32")],
)
def test_auto_on_cpu_keeps_bf16_only_where_it_is_measured_clearly_faster(fp32_s, bf16_s, expected):
    seen = []

    def measure(shapes):
        seen.append(shapes)
        return fp32_s, bf16_s

    choice = choose_precision("auto", CPU, SHAPES, measure)
    assert choice.name == expected and seen == [SHAPES]
    assert f"{fp32_s / bf16_s:.2f}x" in choice.how


def test_an_asked_precision_or_another_device_measures_nothing():
    def measure(shapes):
        raise AssertionError("nothing to measure")

    assert choose_precision("fp32", CPU, SHAPES, measure).name == "fp32"
    assert choose_precision("bf16", CPU, SHAPES, measure).name == "bf16"
    assert choose_precision("auto", torch.device("cuda"), SHAPES, measure).name == "auto"
    assert precision_for(CPU, "bf16").dtype is torch.bfloat16 and precision_for(CPU, "auto").dtype is None
    assert precision_for(torch.device("cuda"), "fp32").dtype is None


def test_the_products_timed_are_the_models_own():
    cfg = build_config("cpu-small", None, ["vocab_size=65", "n_embd=32", "n_head=2"]).model
    shapes = product_shapes(build_model(cfg), 12 * 64)
    assert shapes == ((768, 32, 32), (768, 32, 65), (768, 32, 96), (768, 32, 128), (768, 128, 32))
    fp32_s, bf16_s = time_products.__wrapped__(((8, 16, 16),))  # the real timer: two positive durations
    assert fp32_s > 0 and bf16_s > 0


TINY = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=8",
    "eval_batches=2",
    "max_steps=30",
    "eval_interval=30",
    "log_interval=1",
    "sample_tokens=0",
    "device=cpu",
]


def _train(char_dataset, run, capsys):
    from gptlab.train.trainer import train

    cfg = build_config("cpu-modern", None, TINY)
    cfg.data = str(char_dataset)
    train(cfg, run)
    losses = [json.loads(line).get("train_loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in losses if x is not None], capsys.readouterr().out


def test_bf16_where_measured_faster_is_recorded_and_follows_the_fp32_loss_curve(
    char_dataset, tmp_path, capsys, monkeypatch
):
    fp32, fp32_out = _train(char_dataset, tmp_path / "fp32", capsys)  # the tests' tie: fp32
    monkeypatch.setattr(gptlab.precision, "time_products", lambda shapes: (1.0, 0.4))
    bf16, bf16_out = _train(char_dataset, tmp_path / "bf16", capsys)
    assert "(fp32, auto: bf16 measured 1.00x" in fp32_out and "(bf16, auto: bf16 measured 2.50x" in bf16_out
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["train"]["precision"] == "bf16"
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["train"]["precision"] == "fp32"
    assert bf16 != fp32  # bf16 products really ran
    assert fp32[-1] < fp32[0] - 0.5  # a curve that falls, followed step by step
    assert bf16 == pytest.approx(fp32, abs=0.05)


def test_a_cpu_run_from_before_precision_resumes_in_fp32_without_measuring(char_dataset, tmp_path, monkeypatch):
    from gptlab.train.trainer import train

    cfg = build_config(
        "cpu-tiny", None, TINY[:-4] + ["max_steps=2", "eval_interval=2", "sample_tokens=0", "device=cpu"]
    )
    cfg.data = str(char_dataset)
    train(cfg, tmp_path / "run")
    config = tmp_path / "run" / "config.json"
    saved = json.loads(config.read_text())
    del saved["train"]["precision"]  # as a run written before the field existed
    config.write_text(json.dumps(saved))

    def measure(shapes):
        raise AssertionError("a resumed run keeps its precision")

    monkeypatch.setattr(gptlab.precision, "time_products", measure)
    train(None, tmp_path / "run", resume=True, max_steps=3)
    assert json.loads(config.read_text())["train"]["precision"] == "fp32"


@pytest.mark.parametrize(("rank_zero_votes", "expected"), [(0.0, "fp32"), (1.0, "bf16")])
def test_every_rank_takes_rank_zeros_choice(monkeypatch, rank_zero_votes, expected):
    from gptlab.config import TrainConfig
    from gptlab.train import step
    from gptlab.train.distributed import Ranks

    monkeypatch.setattr(gptlab.precision, "time_products", lambda shapes: (1.0, 0.2))  # this rank: bf16
    sent = []

    def all_sum(values, ranks, device):
        sent.append(values)
        return [rank_zero_votes + values[0]]

    monkeypatch.setattr(step, "all_sum", all_sum)
    model = build_model(build_config("cpu-small", None, ["vocab_size=65", "n_embd=32", "n_head=2"]).model)
    tcfg = TrainConfig(batch_size=4)
    choice = step.resolve_precision(model, tcfg, Ranks(rank=1, world_size=2), CPU)
    assert sent == [[0.0]]  # a rank other than 0 votes nothing
    assert choice.name == tcfg.precision == expected
