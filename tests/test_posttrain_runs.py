"""finetune, align, chat and /v1/chat/completions on real runs (tiny models, a few steps)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_clean_error, cli_in_process, interrupted_at, serving
from gptlab.config import build_config
from gptlab.data.corpora import SkipReport
from gptlab.data.prepare import prepare
from gptlab.posttrain.poems import instruction_records, preference_records, read_poems, write_jsonl
from gptlab.runs import weights_path
from gptlab.train.trainer import train

SFT_ARGS = [
    "--max-steps",
    "4",
    "batch_size=4",
    "eval_interval=2",
    "checkpoint_interval=2",
    "held_out=4",
    "sample_prompts=1",
    "sample_tokens=6",
    "log_interval=1",
    "lr=1e-3",
    "device=cpu",
]


def tree_digest(run):
    """sha256 of every file under a run, by relative path."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def metrics(run, key):
    return {r["step"]: r[key] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tang_jsonl):
    """Short Tang poems, their instruction and preference records, and a tiny char base run."""
    root = tmp_path_factory.mktemp("posttrain")
    with open(tang_jsonl, encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(400)]
    short = [r for r in records if len("\n".join(r["paragraphs"])) <= 40]
    write_jsonl(root / "poems.jsonl", short)
    poems = read_poems([str(root / "poems.jsonl")], SkipReport())
    write_jsonl(root / "sft.jsonl", instruction_records(poems, "{title}"))  # chars the base vocabulary has
    write_jsonl(root / "pairs.jsonl", preference_records(poems, "{title}"))
    prepare([str(root / "poems.jsonl")], root / "data", "char", progress=False)
    cfg = build_config(
        None,
        None,
        [
            "max_steps=2",
            "n_layer=1",
            "n_head=2",
            "n_embd=32",
            "block_size=64",
            "batch_size=4",
            "eval_batches=1",
            "sample_tokens=0",
            "device=cpu",
        ],
    )
    cfg.data = str(root / "data")
    train(cfg, root / "base")
    return root


@pytest.fixture(scope="module")
def sft(runs):
    """The base run fine-tuned 4 steps, with the base run's files hashed before and after."""
    before = tree_digest(runs / "base")
    from gptlab.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            [
                "finetune",
                "--from",
                str(runs / "base"),
                "--data",
                str(runs / "sft.jsonl"),
                "--out",
                str(runs / "sft"),
                *SFT_ARGS,
            ]
        )
    assert done.value.code == 0
    return runs / "sft", before


def test_finetune_leaves_the_base_run_untouched_and_learns_answers(runs, sft):
    run, before = sft
    assert tree_digest(runs / "base") == before
    base_w, tuned = load_file(weights_path(runs / "base")), load_file(weights_path(run))
    rows = next(k for k in ("wte.weight", "lm_head.weight") if k in tuned)  # a tied matrix is stored once
    assert tuned[rows].shape[0] == base_w[rows].shape[0] + 4  # the chat tokens' rows
    val = metrics(run, "val_loss")
    assert sorted(val) == [0, 2, 4] and val[4] < val[0]  # held-out answers get likelier
    assert "=== step 4 ===" in (run / "samples.txt").read_text(encoding="utf-8")
    meta = json.loads((run / "data_meta.json").read_text())
    assert meta["held_out_records"] == 4 and meta["train_records"] > 4


def test_finetune_interrupted_and_resumed_matches_the_straight_run(runs, sft, tmp_path, monkeypatch, capsys):
    with interrupted_at(monkeypatch, 2):
        first = cli_in_process(
            capsys,
            "finetune",
            "--from",
            runs / "base",
            "--data",
            runs / "sft.jsonl",
            "--out",
            tmp_path / "resumed",
            *SFT_ARGS,
        )
        assert first.returncode == 130 and "gptlab finetune --resume" in first.stdout
    again = cli_in_process(capsys, "finetune", "--resume", tmp_path / "resumed")
    assert again.returncode == 0, again.stderr
    straight, resumed = load_file(weights_path(sft[0])), load_file(weights_path(tmp_path / "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert metrics(tmp_path / "resumed", "train_loss") == metrics(sft[0], "train_loss")


def test_align_starts_at_ln2_and_logs_margin_and_accuracy(runs, sft, capsys):
    done = cli_in_process(
        capsys,
        "align",
        "--from",
        sft[0],
        "--data",
        runs / "pairs.jsonl",
        "--out",
        runs / "dpo",
        "--max-steps",
        "2",
        "batch_size=2",
        "eval_interval=2",
        "held_out=4",
        "sample_tokens=0",
        "beta=0.5",
        "lr=1e-3",
        "device=cpu",
    )
    assert done.returncode == 0, done.stderr
    evals = [
        r
        for r in map(json.loads, (runs / "dpo" / "metrics.jsonl").read_text().splitlines())
        if "preference_accuracy" in r
    ]
    assert [r["step"] for r in evals] == [0, 2]
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5) and evals[0]["reward_margin"] == 0
    assert json.loads((runs / "dpo" / "config.json").read_text())["posttrain"]["beta"] == 0.5


def test_bad_post_training_input_is_one_clear_line(runs, sft, tmp_path, capsys):
    base = runs / "base"
    cases = [
        (["finetune", "--from", base, "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "x"], "not found"),
        (["finetune", "--from", base, "--data", runs / "sft.jsonl", "--out", base], "what this command reads (--from"),
        (["finetune", "--from", base, "--data", runs / "sft.jsonl", "--out", tmp_path / "y", "n_layer=3"], "model"),
        (["align", "--from", base, "--data", runs / "sft.jsonl", "--out", tmp_path / "z"], "no usable preference"),
        (["align", "--resume", sft[0]], "not a `gptlab align` run"),
        (["finetune", "--from", base, "--data", runs / "sft.jsonl", "--out", tmp_path / "w", "beta=0"], "beta"),
    ]
    for args, needle in cases:
        assert_clean_error(cli_in_process(capsys, *args), needle)
    assert not (tmp_path / "z").exists() and not (tmp_path / "w").exists()


def test_chat_in_the_terminal_streams_and_leaves_on_end_of_input(sft, runs, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("帝京\n\n秦川\n"))  # two questions, a blank line, then Ctrl-D
    talk = cli_in_process(capsys, "chat", sft[0], "--max-tokens", "5", "--seed", "1", "--device", "cpu")
    assert talk.returncode == 0, talk.stderr
    assert talk.stdout.count("model> ") == 2 and talk.stderr == ""
    # A line with a character the tokenizer lacks is reported in one line; the session and its turns go on.
    monkeypatch.setattr(sys, "stdin", io.StringIO("帝京\n☃\n秦川\n"))
    again = cli_in_process(capsys, "chat", sft[0], "--max-tokens", "5", "--seed", "1", "--device", "cpu")
    assert again.returncode == 0 and again.stdout == talk.stdout  # the same two answers, as without the bad line
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr and "not sent" in again.stderr
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert_clean_error(cli_in_process(capsys, "chat", sft[0], "--top-p", "1e-46", "--device", "cpu"), "top_p")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert_clean_error(cli_in_process(capsys, "chat", runs / "base", "--device", "cpu"), "no chat template")


def test_chat_and_the_sessions_samples_choose_through_the_one_core(sft, runs, tmp_path, capsys, monkeypatch):
    from gptlab.inference import decoding

    calls = []
    real = decoding.step
    monkeypatch.setattr(decoding, "step", lambda states, logits: calls.append(len(states)) or real(states, logits))
    monkeypatch.setattr(sys, "stdin", io.StringIO("帝京\n"))
    talk = cli_in_process(capsys, "chat", sft[0], "--max-tokens", "3", "--seed", "1", "--device", "cpu")
    assert talk.returncode == 0, talk.stderr
    assert calls, "chat chose its tokens elsewhere"
    calls.clear()
    args = ["--max-steps", "2", *SFT_ARGS[2:]]
    tuned = cli_in_process(
        capsys, "finetune", "--from", runs / "base", "--data", runs / "sft.jsonl", "--out", tmp_path / "t", *args
    )
    assert tuned.returncode == 0, tuned.stderr
    assert calls, "the session's samples chose their tokens elsewhere"


@pytest.fixture(scope="module")
def server(sft, tmp_path_factory):
    """`gptlab serve` on the fine-tuned run, in its own process; yields its base URL."""
    with serving(sft[0], logs=tmp_path_factory.mktemp("chat-server")) as base:
        yield base


def test_openai_client_chats_with_a_fine_tuned_run(server, sft):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    messages = [{"role": "system", "content": "詩"}, {"role": "user", "content": "帝京"}]
    whole = client.chat.completions.create(
        model=sft[0].name, messages=messages, max_tokens=8, temperature=0.9, top_p=0.95, n=2, seed=3, stop=["。"]
    )
    assert len(whole.choices) == 2 and all(c.message.role == "assistant" for c in whole.choices)
    assert all(c.finish_reason in ("stop", "length") and "<|end|>" not in c.message.content for c in whole.choices)
    assert all("。" not in c.message.content for c in whole.choices)
    again = client.chat.completions.create(
        model=sft[0].name, messages=messages, max_tokens=8, temperature=0.9, top_p=0.95, n=2, seed=3, stop=["。"]
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in whole.choices]  # seeded
    streamed = client.chat.completions.create(
        model=sft[0].name,
        messages=messages,
        max_tokens=8,
        temperature=0.9,
        top_p=0.95,
        seed=3,
        stop=["。"],
        stream=True,
    )
    pieces, finish = [], None
    for chunk in streamed:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason


def test_a_base_run_answers_400_saying_it_has_no_chat_template(server, runs):
    import openai
    from fastapi.testclient import TestClient

    from gptlab.serve.app import create_app

    # The base run's app in this process (the openai client over Starlette's test transport).
    base = openai.OpenAI(
        base_url="http://testserver/v1", api_key="none", http_client=TestClient(create_app(runs / "base", "cpu"))
    )
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        base.chat.completions.create(model="base", messages=[{"role": "user", "content": "帝京"}])
    chat = openai.OpenAI(base_url=server + "/v1", api_key="none")
    with pytest.raises(openai.BadRequestError, match="messages"):
        chat.chat.completions.create(model="sft", messages=[])
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        chat.chat.completions.create(model="sft", messages=[{"role": "user", "content": "x"}], logit_bias={"1": 1})


def test_a_chat_error_says_context_length_only_when_the_context_is_what_overflowed(server, sft):
    import httpx

    def error(content: str) -> dict:
        r = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    unknown = error("☃")  # a character the tokenizer lacks: a bad message, not a long one
    assert unknown["param"] == "messages" and unknown["code"] != "context_length_exceeded"
    too_long = error("帝" * 10_000)  # far past the tiny model's window
    assert too_long["code"] == "context_length_exceeded" and "does not fit" in too_long["message"]
