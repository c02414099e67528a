"""Verse pairs from poem-data, the reward model (`gptlab reward`), its loader and POST /api/reward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from conftest import assert_clean_error, cli_in_process, interrupted_at
from gptlab.config import build_config
from gptlab.data.corpora import SkipReport
from gptlab.data.prepare import prepare
from gptlab.posttrain.examples import encode_pair, pair_batch
from gptlab.posttrain.poems import MIN_SCORE_GAP, read_poems, title_kind, verse_pair_records, write_jsonl
from gptlab.posttrain.records import read_preferences
from gptlab.posttrain.reward import bradley_terry, load_reward_model, pair_inputs
from gptlab.posttrain.template import ChatTemplate, Message
from gptlab.posttrain.verse import score
from gptlab.runs import load_run, weights_path
from gptlab.train.trainer import train
from test_posttrain_runs import metrics, tree_digest

RM_ARGS = [
    "--max-steps",
    "30",
    "batch_size=8",
    "eval_interval=15",
    "checkpoint_interval=15",
    "held_out=16",
    "log_interval=5",
    "lr=3e-3",
    "device=cpu",
]


@pytest.fixture(scope="module")
def poems(tmp_path_factory, tang_jsonl):
    """Short Tang poems (a char base vocabulary holds every character), their verse pairs, a tiny base run."""
    root = tmp_path_factory.mktemp("reward")
    with open(tang_jsonl, encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(2000)]
    write_jsonl(root / "poems.jsonl", [r for r in records if len("\n".join(r["paragraphs"])) <= 40])
    prepare([str(root / "poems.jsonl")], root / "data", "char", progress=False)
    cfg = build_config(
        None,
        None,
        ["max_steps=2", "n_layer=1", "n_head=2", "n_embd=32", "block_size=64", "batch_size=4", "eval_batches=1"]
        + ["sample_tokens=0", "device=cpu"],
    )
    cfg.data = str(root / "data")
    train(cfg, root / "base")
    return root


def gptlab(*args: object) -> int:
    """`gptlab ARGS...` in this process, for module fixtures (no capsys there); its exit code."""
    from gptlab.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


@pytest.fixture(scope="module")
def rm(poems):
    """The verse pairs written by `gptlab poem-data`, and a reward model trained on them 30 steps (with
    the base run's files hashed before)."""
    before = tree_digest(poems / "base")
    assert (
        gptlab("poem-data", poems / "poems.jsonl", "--verse-pairs", poems / "pairs.jsonl", "--template", "{title}") == 0
    )
    assert (
        gptlab("reward", "--from", poems / "base", "--data", poems / "pairs.jsonl", "--out", poems / "rm", *RM_ARGS)
        == 0
    )
    return poems / "rm", before


def test_verse_pairs_prefer_the_better_verse_within_a_kind_of_title(tang_jsonl):
    poems = read_poems([str(tang_jsonl)], SkipReport())[:3000]
    records = verse_pair_records(poems, "{title}", seed=7)
    by_text: dict = {}
    for p in poems:
        by_text.setdefault(p.text, p)  # the first of a poem kept under two titles, as the pairs keep it
    assert len(records) > 300
    for r in records:
        chosen, rejected = by_text[r["chosen"]], by_text[r["rejected"]]
        assert score(chosen.text) >= score(rejected.text) + MIN_SCORE_GAP
        assert title_kind(chosen.title) == title_kind(rejected.title)
        assert r["prompt"] in (chosen.title, rejected.title)  # the prompt is either poem's, not always chosen's
    assert {r["prompt"] for r in records} & {by_text[r["rejected"]].title for r in records}
    assert records == verse_pair_records(poems, "{title}", seed=7)  # the seed fixes the pairs
    texts = [t for r in records for t in (r["chosen"], r["rejected"])]
    assert len(texts) == len(set(texts))  # each poem in one pair at most: held-out pairs share no poem


def test_title_kind_looks_past_collections_and_notes():
    assert title_kind("鼓吹曲辭 將進酒") == "將" and title_kind("雜曲歌辭 踏歌詞 一") == "踏"
    assert title_kind("[擬]送賀秘監歸會稽詩") == "擬"
    assert title_kind("送友人") == "送"


def test_bradley_terry_is_ln2_for_a_tie_and_follows_the_margin():
    tie = bradley_terry(torch.zeros(3), torch.zeros(3))
    assert tie.loss.item() == pytest.approx(math.log(2)) and tie.accuracy.item() == 0.0
    out = bradley_terry(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.0]))
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert out.loss.item() == pytest.approx(expected) and out.accuracy.item() == 0.5
    assert out.margin.item() == pytest.approx(0.5)


def test_the_reward_is_read_at_each_conversations_last_token(poems, rm):
    template = ChatTemplate(load_run(rm[0]).tokenizer)
    pairs = read_preferences(poems / "pairs.jsonl", SkipReport())[:6]
    encoded = [encode_pair(template, p, 64, SkipReport()) for p in pairs]
    batch = pair_batch(encoded)  # rows of different lengths, right-padded
    ids, at = pair_inputs(batch)
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    for row, example, last in zip(ids.tolist(), rows, at.tolist()):
        assert row[: len(example.ids)] == example.ids and last == len(example.ids) - 1


def test_reward_trains_with_bradley_terry_and_leaves_the_base_untouched(poems, rm):
    run, before = rm
    assert tree_digest(poems / "base") == before
    val, train_loss = metrics(run, "pair_accuracy"), metrics(run, "eval_train_loss")
    assert sorted(val) == [0, 15, 30] and all(0.0 <= a <= 1.0 for a in val.values())
    assert train_loss[0] == pytest.approx(math.log(2), abs=0.05)  # a fresh head scores every answer alike
    assert train_loss[30] < train_loss[0] - 0.02  # the loss goes down...
    assert metrics(run, "train_pair_accuracy")[30] > 0.5  # ...and the pairs it saw are ranked above chance
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["reward_head"] and config["posttrain"]["stage"] == "rm"
    weights = load_file(weights_path(run))
    assert weights["reward_head.weight"].shape == (1, 32)
    assert not (run / "samples.txt").exists()  # a reward model writes no samples


def test_reward_resumed_matches_the_straight_run(poems, rm, tmp_path, monkeypatch, capsys):
    with interrupted_at(monkeypatch, 10):
        args = ["--from", poems / "base", "--data", poems / "pairs.jsonl", "--out", tmp_path / "rm", *RM_ARGS]
        first = cli_in_process(capsys, "reward", *args)
        assert first.returncode == 130 and "gptlab reward --resume" in first.stdout
        assert "pair accuracy" in first.stdout and "held-out" in first.stdout  # the progress line
    again = cli_in_process(capsys, "reward", "--resume", tmp_path / "rm")
    assert again.returncode == 0, again.stderr
    straight, resumed = load_file(weights_path(rm[0])), load_file(weights_path(tmp_path / "rm"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert metrics(tmp_path / "rm", "pair_accuracy") == metrics(rm[0], "pair_accuracy")


def test_loaded_reward_model_scores_as_training_did_and_the_server_serves_it(poems, rm):
    scorer = load_reward_model(rm[0])
    pairs = read_preferences(poems / "pairs.jsonl", SkipReport())[:4]
    prompts = [p.prompt for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rewards = scorer(prompts, answers)
    assert rewards.shape == (8,) and rewards.dtype == torch.float32
    # The same conversations through the training objective's path give the same rewards.
    encoded = [encode_pair(scorer.template, p, 64, SkipReport()) for p in pairs]
    ids, at = pair_inputs(pair_batch(encoded))
    with torch.no_grad():
        trained_path, _ = scorer.model(ids, reward_at=at)
    assert torch.allclose(rewards, trained_path, atol=1e-5)

    from gptlab.serve.app import create_app

    with TestClient(create_app(rm[0], "cpu")) as client:
        one = client.post("/api/reward", json={"prompt": prompts[0], "completion": answers[0]})
        assert one.status_code == 200 and one.json()["reward"] == pytest.approx(rewards[0].item(), abs=1e-5)
        text = client.post("/api/reward", json={"text": answers[0]})
        assert text.json()["reward"] == pytest.approx(scorer([""], [answers[0]])[0].item(), abs=1e-5)
        for body, needle in [
            ({"text": "x", "prompt": "y", "completion": "z"}, "either"),
            ({"prompt": "y"}, "prompt and completion"),
            ({}, "text"),
            ({"text": "\U0001f600"}, ""),  # a character the char tokenizer never saw
        ]:
            refused = client.post("/api/reward", json=body)
            assert refused.status_code == 400 and needle in json.dumps(refused.json())
        assert client.post("/api/reward", json={"text": 3}).status_code in (400, 422)
    with TestClient(create_app(poems / "base", "cpu")) as client:
        refused = client.post("/api/reward", json={"text": "秦川"})
        assert refused.status_code == 400 and "not a reward model" in refused.json()["detail"]


def test_bad_reward_input_is_one_clear_line(poems, rm, tmp_path, capsys):
    base = poems / "base"
    cases = [
        (["reward", "--from", base, "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "x"], "not found"),
        (["reward", "--from", base, "--data", poems / "poems.jsonl", "--out", tmp_path / "y"], "no usable preference"),
        (
            ["reward", "--from", base, "--data", poems / "pairs.jsonl", "--out", tmp_path / "z", "reward_head=false"],
            "model",
        ),
        (["reward", "--resume", base], "not a `gptlab reward` run"),
        (["poem-data", poems / "poems.jsonl", "--verse-pairs", poems / "poems.jsonl"], "poems"),
        (["export", rm[0], "--format", "hf", "--out", tmp_path / "hf"], "reward_head"),
    ]
    for args, needle in cases:
        assert_clean_error(cli_in_process(capsys, *args), needle)
    with pytest.raises(Exception, match="not a reward model"):
        load_reward_model(base)


def test_two_ddp_ranks_train_a_reward_model_as_one_process_with_double_accumulation(poems, rm, tmp_path):
    from test_distributed import torchrun

    common = ["--data", poems / "pairs.jsonl", "--max-steps", "2", "batch_size=4", "eval_interval=2", "held_out=8"]
    common += ["log_interval=1", "lr=3e-3", "device=cpu"]
    assert gptlab("reward", "--from", poems / "base", "--out", tmp_path / "one", *common, "grad_accum=2") == 0
    two = torchrun("reward", "--from", str(poems / "base"), "--out", str(tmp_path / "two"), *map(str, common))
    assert two.returncode == 0, two.stderr
    for key in ("train_loss", "val_loss", "pair_accuracy"):
        one, both = metrics(tmp_path / "one", key), metrics(tmp_path / "two", key)
        assert sorted(one) == sorted(both) and all(both[s] == pytest.approx(one[s], rel=1e-5) for s in one), key


def test_an_untied_unembedding_stays_frozen_in_a_reward_model(poems, rm, tmp_path):
    # The reward never reads lm_head: it must get no update (and so no gradient for DDP to wait for).
    cfg = build_config(
        None,
        None,
        ["max_steps=1", "n_layer=1", "n_head=2", "n_embd=32", "block_size=64", "batch_size=2", "eval_batches=1"]
        + ["sample_tokens=0", "device=cpu", "tie_embeddings=false"],
    )
    cfg.data = str(poems / "data")
    train(cfg, tmp_path / "untied")
    out = tmp_path / "untied-rm"
    args = ["--data", poems / "pairs.jsonl", "--out", out, "--max-steps", "2", "held_out=4", "lr=1e-2", "device=cpu"]
    assert gptlab("reward", "--from", tmp_path / "untied", *args) == 0
    base, trained = load_file(weights_path(tmp_path / "untied")), load_file(weights_path(out))
    rows = base["lm_head.weight"].shape[0]
    assert torch.equal(trained["lm_head.weight"][:rows], base["lm_head.weight"])
    assert not torch.equal(trained["blocks.0.mlp.fc.weight"], base["blocks.0.mlp.fc.weight"])


def test_a_conversation_that_fills_the_context_trains_a_reward_model(poems, rm, tmp_path):
    # The reward reads a whole conversation in one pass, so it holds at most block_size tokens: one
    # of block_size + 1 (a full language-model example) is left out as too long, not a crash.
    template = ChatTemplate(load_run(rm[0], "cpu").tokenizer)  # the base's characters and the chat's tokens
    block = 64

    def answer_of(length: int, fill: str) -> str:
        text = ""
        while len(template.encode([Message("user", "春"), Message("assistant", text)])[0]) < length:
            text += fill
        return text

    records = [
        {"prompt": "春", "chosen": answer_of(n, "山"), "rejected": answer_of(n, "水")} for n in (block, block + 1)
    ] * 4
    assert {len(template.encode([Message("user", "春"), Message("assistant", r["chosen"])])[0]) for r in records} == {
        block,
        block + 1,
    }
    write_jsonl(tmp_path / "full.jsonl", records)
    args = ["--data", tmp_path / "full.jsonl", "--out", tmp_path / "rm", "--max-steps", "2", "held_out=2"]
    assert gptlab("reward", "--from", poems / "base", *args, "batch_size=2", "device=cpu") == 0
    assert metrics(tmp_path / "rm", "pair_accuracy")  # it trained and evaluated on the pairs that fit
