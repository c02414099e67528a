"""precision=auto and muon_precision=auto on the CPU: each choice follows its measurement (timers
replaced), a model's whole training step and Muon's own stacks are what is timed, the choices are
recorded in the run and said on the start-of-training line, rank 0's choice is every rank's, runs from
before the fields resume as they ran without measuring, a run iterating Muon in bf16 resumes bit for
bit, and bf16 training (autocast, or Muon's iteration alone) follows fp32's loss curve."""

from __future__ import annotations

import json

import pytest
import torch

import gptlab.precision
from conftest import interrupted_at
from gptlab.config import TrainConfig, build_config
from gptlab.model import build_model
from gptlab.precision import BF16_MARGIN, MAX_ROWS, choose_precision, precision_for, time_training_step, timed_batch
from gptlab.train import muon, step
from gptlab.train.distributed import Ranks
from gptlab.train.optim import build_optimizer

CPU = torch.device("cpu")


def _small_model():
    return build_model(build_config("cpu-small", None, ["vocab_size=65", "n_embd=32", "n_head=2"]).model)


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"),
    [(1.0, 0.25, "bf16"), (1.0, 1.0 / BF16_MARGIN, "bf16"), (1.0, 0.9, "fp32"), (1.0, 300.0, "fp32")],
)
def test_auto_on_cpu_keeps_bf16_only_where_its_training_step_is_measured_clearly_faster(fp32_s, bf16_s, expected):
    model, seen = _small_model(), []

    def measure(model, batch_size, block_size):
        seen.append((model, batch_size, block_size))
        return fp32_s, bf16_s

    choice = choose_precision("auto", CPU, model, 12, 64, measure)
    assert choice.name == expected and seen == [(model, 12, 64)]
    assert f"auto: bf16 measured {fp32_s / bf16_s:.2f}x as fast as fp32 at this model's training step" == choice.how


def test_an_asked_precision_or_another_device_measures_nothing():
    def measure(*args):
        raise AssertionError("nothing to measure")

    model = _small_model()
    assert choose_precision("fp32", CPU, model, 4, 8, measure).name == "fp32"
    assert choose_precision("bf16", CPU, model, 4, 8, measure).name == "bf16"
    assert choose_precision("auto", torch.device("cuda"), model, 4, 8, measure).name == "auto"
    assert precision_for(CPU, "bf16").dtype is torch.bfloat16 and precision_for(CPU, "auto").dtype is None
    assert precision_for(torch.device("cuda"), "fp32").dtype is None


def test_the_step_timed_is_the_models_own_and_leaves_the_run_untouched():
    model = _small_model()
    assert timed_batch(model, 12, 64) == (12, 64)  # the run's B x T
    assert timed_batch(model, 512, 64) == (MAX_ROWS // 64, 64)  # capped rows, whole windows
    big = build_model(build_config("cpu-small", None, ["vocab_size=65", "n_embd=256", "n_head=4"]).model)
    b, t = timed_batch(big, 64, 64)  # about a second of start-up at most: fewer rows, whole windows
    assert t == 64 and 1 <= b < 64 and 6 * sum(p.numel() for p in big.parameters()) * b * t <= 5e9
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fp32_s, bf16_s = time_training_step(model, 2, 8)  # imported before the tests' tie replaced it
    assert fp32_s > 0 and bf16_s > 0  # the real timer: two positive durations
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream is the run's: not drawn from
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_cpu_without_bf16_units_is_not_made_to_time_whole_steps_in_bf16(monkeypatch):
    monkeypatch.setattr(gptlab.precision, "product_check", lambda: (1e-4, 1e-2))  # bf16 products 100x slower

    def work(dtype):
        raise AssertionError("hopeless: nothing more is timed")

    assert gptlab.precision.race(work) == (1e-4, 1e-2)
    assert gptlab.precision.bf16_if_faster(1e-4, 1e-2, "x").name == "fp32"
    ran = []
    monkeypatch.setattr(gptlab.precision, "product_check", lambda: (1e-4, 1e-4))
    fp32_s, bf16_s = gptlab.precision.race(ran.append)
    assert {torch.float32, torch.bfloat16} == set(ran) and fp32_s >= 0 and bf16_s >= 0


def test_muons_precision_follows_its_own_measurement_on_its_own_stacks(monkeypatch):
    model = build_model(build_config("cpu-modern", None, ["vocab_size=65", "n_embd=32", "n_head=2"]).model)
    seen = []

    def run(setting="auto", asked="auto", measured=(1.0, 0.3)):
        def measure(stacks):
            seen.append(list(stacks))
            return measured

        monkeypatch.setattr(muon, "time_newton_schulz", measure)
        tcfg = TrainConfig(optimizer="muon", muon_precision=setting)
        optimizer = build_optimizer(model, tcfg, CPU)
        choice = step.resolve_muon_precision(optimizer, tcfg, asked, Ranks(), CPU)
        dtypes = {g["ns_dtype"] for g in optimizer.optimizers[0].param_groups}
        return choice, tcfg.muon_precision, dtypes

    choice, recorded, dtypes = run()
    assert (choice.name, recorded, dtypes) == ("bf16", "bf16", {"bfloat16"})
    assert choice.how == "auto: bf16 measured 3.33x as fast as fp32 at its own stacks"
    # The stacks timed are the ones a step iterates: the q/k/v blocks with the attention output, and
    # the MLP's wide and tall matrices together (each layer: 3 + 1 blocks of 32 x 32, two of 32 x 128).
    n_layer = model.config.n_layer
    assert sorted(s.shape for s in seen[0]) == [(2 * n_layer, 32, 128), (4 * n_layer, 32, 32)]
    _, recorded, dtypes = run(measured=(1.0, 0.9))
    assert recorded == "fp32" and dtypes == {"float32"}
    seen.clear()
    assert run(asked="fp32")[1] == "fp32" and run(asked="bf16")[1] == "bf16"  # an asked precision, followed
    assert run(setting="fp32", asked="bf16")[1] == "fp32" and run(setting="bf16")[2] == {"bfloat16"}
    assert seen == []  # none of them measured
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw"), CPU)
    assert step.resolve_muon_precision(adamw, TrainConfig(), "auto", Ranks(), CPU) is None


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


def _losses(run, key="train_loss"):
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r[key] for r in records if key in r}


def _train(char_dataset, run, capsys, extra=()):
    from gptlab.train.trainer import train

    cfg = build_config("cpu-modern", None, [*TINY, *extra])
    cfg.data = str(char_dataset)
    train(cfg, run)
    train_config = json.loads((run / "config.json").read_text())["train"]
    return list(_losses(run).values()), capsys.readouterr().out, train_config


def test_bf16_where_measured_faster_is_recorded_and_follows_the_fp32_loss_curve(
    char_dataset, tmp_path, capsys, monkeypatch
):
    fp32, fp32_out, fp32_cfg = _train(char_dataset, tmp_path / "fp32", capsys)  # the tests' ties: fp32
    monkeypatch.setattr(gptlab.precision, "time_training_step", lambda model, b, t: (1.0, 0.4))
    bf16, bf16_out, bf16_cfg = _train(char_dataset, tmp_path / "bf16", capsys)
    assert "(fp32, auto: bf16 measured 1.00x as fast as fp32 at this model's training step;" in fp32_out
    assert "(bf16, auto: bf16 measured 2.50x" in bf16_out
    assert "Muon's orthogonalisation fp32, auto: bf16 measured 1.00x as fast as fp32 at its own stacks" in fp32_out
    assert "Muon's orthogonalisation bf16, as precision=bf16" not in bf16_out  # auto precision: measured apart
    assert (bf16_cfg["precision"], bf16_cfg["muon_precision"]) == ("bf16", "fp32")
    assert (fp32_cfg["precision"], fp32_cfg["muon_precision"]) == ("fp32", "fp32")
    assert bf16 != fp32  # bf16 products really ran
    assert fp32[-1] < fp32[0] - 0.5  # a curve that falls, followed step by step
    assert bf16 == pytest.approx(fp32, abs=0.05)


def test_muons_bf16_iteration_is_recorded_and_follows_the_fp32_loss_curve(char_dataset, tmp_path, capsys, monkeypatch):
    fp32, _, _ = _train(char_dataset, tmp_path / "fp32", capsys)
    monkeypatch.setattr(muon, "time_newton_schulz", lambda stacks: (1.0, 0.25))
    bf16, out, train_config = _train(char_dataset, tmp_path / "bf16", capsys)
    assert "(fp32, auto: bf16 measured 1.00x" in out
    assert "Muon's orthogonalisation bf16, auto: bf16 measured 4.00x as fast as fp32 at its own stacks" in out
    assert (train_config["precision"], train_config["muon_precision"]) == ("fp32", "bf16")
    assert bf16 != fp32  # the iteration really ran in bf16
    assert bf16 == pytest.approx(fp32, abs=0.05)


def test_a_run_iterating_muon_in_bf16_resumes_bit_for_bit(char_dataset, tmp_path, monkeypatch):
    from gptlab.train import trainer

    overrides = [*TINY[:6], "max_steps=10", "eval_interval=5", "checkpoint_interval=100", "log_interval=1"]
    overrides += ["sample_tokens=0", "device=cpu"]
    monkeypatch.setattr(muon, "time_newton_schulz", lambda stacks: (1.0, 0.25))  # bf16, measured
    cfg = build_config("cpu-modern", None, overrides)
    cfg.data = str(char_dataset)
    trainer.train(cfg, tmp_path / "straight")
    cfg = build_config("cpu-modern", None, overrides)
    cfg.data = str(char_dataset)
    with interrupted_at(monkeypatch, 4):
        assert trainer.train(cfg, tmp_path / "resumed").interrupted

    def measure(stacks):
        raise AssertionError("a resumed run keeps its recorded muon_precision")

    monkeypatch.setattr(muon, "time_newton_schulz", measure)
    trainer.train(None, tmp_path / "resumed", resume=True)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert json.loads((resumed / "config.json").read_text())["train"]["muon_precision"] == "bf16"
    assert sorted(_losses(resumed)) == list(range(1, 11))
    assert _losses(resumed) == _losses(straight)  # bit for bit
    assert _losses(resumed, "val_loss") == _losses(straight, "val_loss")


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [({}, ("fp32", "fp32")), ({"precision": "bf16"}, ("bf16", "bf16"))],
    ids=["before-precision", "before-muon-precision"],
)
def test_a_cpu_run_from_before_the_fields_resumes_as_it_ran_without_measuring(
    char_dataset, tmp_path, monkeypatch, recorded, expected
):
    from gptlab.train.trainer import train

    cfg = build_config(
        "cpu-modern", None, TINY[:-4] + ["max_steps=2", "eval_interval=2", "sample_tokens=0", "device=cpu"]
    )
    cfg.data = str(char_dataset)
    train(cfg, tmp_path / "run")
    config = tmp_path / "run" / "config.json"
    saved = json.loads(config.read_text())
    del saved["train"]["precision"], saved["train"]["muon_precision"]  # as a run written before the fields
    saved["train"].update(recorded)
    config.write_text(json.dumps(saved))

    def measure(*args):
        raise AssertionError("a resumed run keeps its precision")

    monkeypatch.setattr(gptlab.precision, "time_training_step", measure)
    monkeypatch.setattr(muon, "time_newton_schulz", measure)
    train(None, tmp_path / "run", resume=True, max_steps=3)
    train_config = json.loads(config.read_text())["train"]
    assert (train_config["precision"], train_config["muon_precision"]) == expected


@pytest.mark.parametrize(("rank_zero_votes", "expected"), [(0.0, "fp32"), (1.0, "bf16")])
def test_every_rank_takes_rank_zeros_choices(monkeypatch, rank_zero_votes, expected):
    monkeypatch.setattr(gptlab.precision, "time_training_step", lambda model, b, t: (1.0, 0.2))  # this rank: bf16
    monkeypatch.setattr(muon, "time_newton_schulz", lambda stacks: (1.0, 0.2))
    sent = []

    def all_sum(values, ranks, device):
        sent.append(values)
        return [rank_zero_votes + values[0]]

    monkeypatch.setattr(step, "all_sum", all_sum)
    model = build_model(build_config("cpu-modern", None, ["vocab_size=65", "n_embd=32", "n_head=2"]).model)
    tcfg = TrainConfig(batch_size=4, optimizer="muon")
    ranks = Ranks(rank=1, world_size=2)
    choice = step.resolve_precision(model, tcfg, ranks, CPU)
    optimizer = build_optimizer(model, tcfg, CPU)
    muon_choice = step.resolve_muon_precision(optimizer, tcfg, "auto", ranks, CPU)
    assert sent == [[0.0], [0.0]]  # a rank other than 0 votes nothing, for either choice
    assert choice.name == tcfg.precision == expected and muon_choice.name == tcfg.muon_precision == expected
    assert "(rank 0's measurement)" in muon_choice.how
