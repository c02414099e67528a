"""Optimizers by parameter role, the schedules, and the modern recipe through train and resume."""

import json

import pytest
import torch

from conftest import interrupted_at
from gptlab.config import ModelConfig, TrainConfig, build_config
from gptlab.errors import GptlabError
from gptlab.model import build_model
from gptlab.train.muon import Muon
from gptlab.train.optim import build_optimizer, lr_at

CPU = torch.device("cpu")


def modern_model():
    return build_model(
        ModelConfig(
            vocab_size=20,
            block_size=8,
            n_layer=2,
            n_head=2,
            n_embd=16,
            position="rope",
            norm="rmsnorm",
            mlp="swiglu",
            tie_embeddings=False,
            bias=False,
        )
    )


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest_each_role_at_its_rate():
    model = modern_model()
    cfg = TrainConfig(optimizer="muon", lr=0.03, embedding_lr=0.1, head_lr=0.006, vector_lr=0.02, weight_decay=0.05)
    opt = build_optimizer(model, cfg, CPU)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    by_role = {g["role"]: g for g in adamw.param_groups}
    assert {r: g["peak_lr"] for r, g in by_role.items()} == {"embedding": 0.1, "head": 0.006, "vector": 0.02}
    assert by_role["vector"]["weight_decay"] == 0.0 and by_role["embedding"]["weight_decay"] == 0.05
    splits = {g["split"] for g in muon.param_groups}
    assert splits == {1, 2, 3}  # proj matrices, SwiGLU's gate|value, q|k|v
    opt.set_lr_factor(0.5)
    assert {g["lr"] for g in opt.param_groups} == {0.015, 0.05, 0.003, 0.01}


def test_classic_adamw_decays_matrices_and_embeddings_never_vectors():
    model = build_model(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    (adamw,) = build_optimizer(model, TrainConfig(), CPU).optimizers
    for group in adamw.param_groups:
        assert group["weight_decay"] == (0.0 if group["role"] == "vector" else 0.1)
        assert all((p.dim() < 2) == (group["role"] == "vector") for p in group["params"])


def test_role_optimizer_state_round_trips():
    model = modern_model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon"), CPU)
    x = torch.randint(0, 20, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    state = opt.state_dict()
    again = build_optimizer(model, TrainConfig(optimizer="muon"), CPU)
    again.load_state_dict(state)
    assert torch.equal(
        again.optimizers[0].state[model.blocks[0].attn.qkv.weight]["momentum_buffer"],
        opt.optimizers[0].state[model.blocks[0].attn.qkv.weight]["momentum_buffer"],
    )
    with pytest.raises(ValueError, match="this run builds 1"):
        build_optimizer(model, TrainConfig(), CPU).load_state_dict(state)


def test_wsd_schedule_warms_up_holds_then_decays_linearly_to_zero():
    cfg = TrainConfig(schedule="wsd", lr=1.0, warmup_steps=10, max_steps=100, decay_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lrs[10:80])
    decay = lrs[80:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(1 / 20)
    assert [round(d - e, 6) for d, e in zip(decay, decay[1:])] == [0.05] * 19  # linear


def test_wsd_decays_to_final_lr_frac_and_zero_is_the_plain_decay_to_the_bit():
    base = dict(schedule="wsd", lr=0.03, warmup_steps=0, max_steps=100, decay_fraction=0.65)
    plain, floored = TrainConfig(**base), TrainConfig(**base, final_lr_frac=0.1)
    assert [lr_at(s, plain) for s in range(100)] == [
        0.03 * min(1.0, (100 - s) / 65) for s in range(100)
    ]  # what the schedule computed before final_lr_frac existed
    lrs = [lr_at(s, floored) for s in range(100)]
    assert all(v == 0.03 for v in lrs[:36]) and lrs[36] < 0.03
    assert lrs[-1] == pytest.approx(0.03 * (0.1 + 0.9 / 65)) and min(lrs) > 0.003
    with pytest.raises(GptlabError, match="final_lr_frac=1.5 must be in"):
        TrainConfig(final_lr_frac=1.5).validate()


def test_cosine_schedule_is_unchanged():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


MODERN_TINY = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=8",
    "eval_batches=2",
    "max_steps=10",
    "eval_interval=5",
    "checkpoint_interval=100",
    "log_interval=1",
    "sample_tokens=8",
    "device=cpu",
]


def losses(run, key="train_loss"):
    return {r["step"]: r[key] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r}


# Muon's own options (Polar Express, NorMuon's second moment in the optimizer state, cautious decay).
MUON_OPTIONS = ["muon_coeffs=polar", "muon_normalize=true", "cautious_wd=true", "weight_decay=0.1"]
# The speedrun-lineage switches on top of the modern recipe: their parameters and schedule resume too.
SPEEDRUN = [
    "value_embeds=true",
    "resid_mix=true",
    "smear=true",
    "final_lr_frac=0.1",
    "decay_fraction=0.65",
    "n_layer=3",
]


@pytest.mark.parametrize("extra", [[], MUON_OPTIONS, SPEEDRUN], ids=["modern", "muon-options", "speedrun"])
def test_modern_recipe_interrupted_and_resumed_matches_an_uninterrupted_run(extra, char_dataset, tmp_path, monkeypatch):
    from gptlab.train import trainer

    overrides = [*MODERN_TINY, *extra]
    cfg = build_config("cpu-modern", None, overrides)
    cfg.data = str(char_dataset)
    trainer.train(cfg, tmp_path / "straight")

    cfg = build_config("cpu-modern", None, overrides)
    cfg.data = str(char_dataset)
    with interrupted_at(monkeypatch, 4):
        first = trainer.train(cfg, tmp_path / "resumed")
    assert first.interrupted and first.step < 10
    trainer.train(None, tmp_path / "resumed", resume=True)
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 11))
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step
    assert losses(tmp_path / "resumed", "val_loss")[10] == pytest.approx(
        losses(tmp_path / "straight", "val_loss")[10], abs=1e-6
    )
    assert straight[10] < straight[1] - 0.5  # and it learns
