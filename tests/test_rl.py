"""`gptlab rl` on real runs (tiny models, a few steps): GRPO as a training session, rollouts through the one
decoding core, exact resume, the starting run never written, DDP, and chat with an RL run."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_clean_error, cli_env, cli_in_process, interrupted_at, serving
from gptlab.runs import weights_path
from test_distributed import torchrun
from test_posttrain_runs import metrics, runs, sft, tree_digest  # noqa: F401 (fixtures: a char base run, fine-tuned)

RL_ARGS = [
    "--max-steps",
    "4",
    "batch_size=2",
    "group_size=3",
    "rollout_tokens=12",
    "eval_interval=2",
    "checkpoint_interval=2",
    "held_out=4",
    "sample_prompts=1",
    "log_interval=1",
    "lr=1e-3",
    "device=cpu",
]


def rl_cli(capsys, sft_run, prompts, out, *extra):
    return cli_in_process(
        capsys, "rl", "--from", sft_run, "--prompts", prompts, "--reward", "verse", "--out", out, *extra
    )


@pytest.fixture(scope="module")
def rl(sft, runs):  # noqa: F811 (the fixtures imported above)
    """The fine-tuned run trained 4 steps with GRPO and the verse reward, its files hashed before and after."""
    before = tree_digest(sft[0])
    from gptlab.cli import main

    out = runs / "rl"
    argv = ["rl", "--from", str(sft[0]), "--prompts", str(runs / "sft.jsonl"), "--reward", "verse", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*argv, *RL_ARGS])
    assert done.value.code == 0
    return out, before


def test_rl_trains_from_the_chat_run_without_writing_it(rl, sft, capsys):  # noqa: F811
    run, before = rl
    assert tree_digest(sft[0]) == before
    tuned, start = load_file(weights_path(run)), load_file(weights_path(sft[0]))
    assert tuned.keys() == start.keys() and any(not torch.equal(tuned[k], start[k]) for k in tuned)
    for key in ("reward", "kl", "answer_tokens", "ended"):  # each progress record has the rollouts' figures
        assert sorted(metrics(run, key)) == [1, 2, 3, 4], key
    assert all(-1 <= r <= 1 for r in metrics(run, "reward").values())
    assert metrics(run, "kl")[1] == pytest.approx(0, abs=1e-6)  # the first step's policy is the reference
    assert all(1 <= n <= 12 for n in metrics(run, "answer_tokens").values())
    assert sorted(metrics(run, "val_reward")) == [0, 2, 4]
    samples = (run / "samples.txt").read_text(encoding="utf-8")
    assert "=== step 4 ===" in samples and "[training rollouts]" in samples and "reward " in samples
    meta = json.loads((run / "data_meta.json").read_text())
    assert meta["stage"] == "rl" and meta["held_out_records"] == 4
    cfg = json.loads((run / "config.json").read_text())["posttrain"]
    assert cfg["reward"] == "verse" and cfg["group_size"] == 3


def test_progress_lines_show_reward_kl_and_length(sft, runs, tmp_path, capsys):  # noqa: F811
    done = rl_cli(capsys, sft[0], runs / "sft.jsonl", tmp_path / "r", *RL_ARGS[:2], *RL_ARGS[4:], "batch_size=1")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("step 4/4"))
    assert "reward " in line and "kl " in line and "answer tokens " in line
    assert "held-out reward" in done.stdout


def test_rl_trains_in_bfloat16_autocast(sft, runs, tmp_path, capsys):  # noqa: F811
    # precision=auto picks bf16 on a CPU with bfloat16 units: the rollouts run inside the training
    # step's autocast, where the engine's float32 products must still decode.
    done = rl_cli(capsys, sft[0], runs / "sft.jsonl", tmp_path / "r", *RL_ARGS[:2], *RL_ARGS[4:], "precision=bf16")
    assert done.returncode == 0, done.stderr
    assert "step 4/4" in done.stdout and "bf16" in done.stdout


def test_rl_interrupted_and_resumed_matches_the_straight_run(rl, sft, runs, tmp_path, monkeypatch, capsys):  # noqa: F811
    with interrupted_at(monkeypatch, 2):
        first = rl_cli(capsys, sft[0], runs / "sft.jsonl", tmp_path / "resumed", *RL_ARGS)
        assert first.returncode == 130 and "gptlab rl --resume" in first.stdout
    again = cli_in_process(capsys, "rl", "--resume", tmp_path / "resumed")
    assert again.returncode == 0, again.stderr
    straight, resumed = load_file(weights_path(rl[0])), load_file(weights_path(tmp_path / "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    for key in ("train_loss", "reward", "answer_tokens"):  # the same rollouts after the resume
        assert metrics(tmp_path / "resumed", key) == metrics(rl[0], key), key


def test_rollouts_are_drawn_by_the_one_decoding_core_with_their_seed(sft, monkeypatch):  # noqa: F811
    from gptlab.inference import decoding
    from gptlab.inference.decoding import SamplingParams
    from gptlab.posttrain.rollouts import rollouts
    from gptlab.posttrain.template import ChatTemplate, Message
    from gptlab.runs import load_run

    loaded = load_run(sft[0])
    template = ChatTemplate(loaded.tokenizer)
    prompts = [template.prompt([Message("user", t)]) for t in ("帝京", "秦川")]
    calls = []
    real = decoding.step
    monkeypatch.setattr(decoding, "step", lambda states, logits: calls.append(len(states)) or real(states, logits))
    params = SamplingParams(10, 1.0, seed=7)
    answers = rollouts(loaded.model, loaded.tokenizer, prompts, 3, params, template.end_id)
    assert calls and max(calls) == 6, "rollouts chose their tokens elsewhere (or not all answers in one batch)"
    assert [a.prompt for a in answers] == [0, 0, 0, 1, 1, 1]
    assert len({tuple(a.ids) for a in answers[:3]}) > 1  # a group's answers differ
    for a in answers:
        assert 1 <= len(a.ids) <= 10 and a.ended == (a.ids[-1] == template.end_id)
        assert a.text == loaded.tokenizer.decode([i for i in a.ids if i != template.end_id])
    # Answer i is sequence i of the request: alone, with seed + i, it is the same answer.
    alone = rollouts(
        loaded.model, loaded.tokenizer, [prompts[1]], 1, SamplingParams(10, 1.0, seed=7 + 4), template.end_id
    )
    assert alone[0].ids == answers[4].ids


def test_one_grpo_step_makes_better_answers_likelier(sft):  # noqa: F811
    """After one small step, log p rises for answers above their group's mean and falls for those below:
    sum(advantage x change in log p) > 0 (the policy gradient's first-order promise)."""
    from gptlab.inference.decoding import SamplingParams
    from gptlab.posttrain.examples import Example
    from gptlab.posttrain.grpo import group_advantages
    from gptlab.posttrain.rl import GRPOObjective, Prompt, PromptBatch, answer_logps
    from gptlab.posttrain.template import ChatTemplate, Message
    from gptlab.runs import load_run

    loaded = load_run(sft[0])
    model, template = loaded.model.train(), ChatTemplate(loaded.tokenizer)
    reference = load_run(sft[0]).model

    def arbitrary(prompt_ids, prompts, answers):  # any reward that tells answers apart
        return torch.tensor([float(sum(a.ids) % 7) for a in answers])

    objective = GRPOObjective(
        model, reference, loaded.tokenizer, template.end_id, arbitrary, 4, SamplingParams(8, 1.0), 0.2, 0.0
    )
    batch = PromptBatch([Prompt(template.prompt([Message("user", t)]), t) for t in ("帝京", "秦川")], seed=11)
    loss = objective(model, batch)
    texts_rollouts = objective.last
    rows = [
        Example(batch.prompts[r.prompt].ids + r.ids, [False] * len(batch.prompts[r.prompt].ids) + [True] * len(r.ids))
        for _, r, _ in texts_rollouts
    ]
    rewards = torch.tensor([v for _, _, v in texts_rollouts])
    advantages = group_advantages(rewards, 4)
    assert advantages.abs().sum() > 0, "every answer had the same reward: nothing to learn from"
    with torch.no_grad():
        logps, mask = answer_logps(model, rows, torch.device("cpu"))
        before = (logps * mask).sum(-1)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
        logps, mask = answer_logps(model, rows, torch.device("cpu"))
        after = (logps * mask).sum(-1)
    assert (advantages * (after - before)).sum() > 0


def test_rl_session_extends_the_training_session_through_its_hooks():
    from gptlab.posttrain.rl import RLSession
    from gptlab.train.trainer import TrainingSession

    overridden = {name for name in vars(RLSession) if callable(getattr(TrainingSession, name, None))}
    assert overridden and overridden <= set(TrainingSession.HOOKS)  # never the loop, checkpoints or resume


def test_bad_rl_input_is_one_clear_line(runs, sft, tmp_path, capsys):  # noqa: F811
    prompts = runs / "sft.jsonl"
    base = ["--from", sft[0], "--prompts", prompts, "--out", tmp_path / "x"]
    assert_clean_error(cli_in_process(capsys, "rl", *base), "--reward")
    assert_clean_error(cli_in_process(capsys, "rl", *base, "--reward", tmp_path / "nope"), "neither 'verse'")
    assert_clean_error(cli_in_process(capsys, "rl", *base, "--reward", "verse", "group_size=1"), "group_size")
    assert_clean_error(cli_in_process(capsys, "rl", *base, "--reward", "verse", "clip=1.5"), "clip")
    assert_clean_error(cli_in_process(capsys, "rl", *base, "--reward", "verse", "reward=x"), "--reward")
    assert_clean_error(cli_in_process(capsys, "rl", *base, "--reward", "verse", "fsdp=true"), "fsdp")
    plain = ["--from", runs / "base", "--prompts", prompts, "--reward", "verse", "--out", tmp_path / "y"]
    assert_clean_error(cli_in_process(capsys, "rl", *plain), "no chat template")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"response": "no prompt"}\n', encoding="utf-8")
    no_prompts = ["--from", sft[0], "--prompts", empty, "--reward", "verse", "--out", tmp_path / "z"]
    assert_clean_error(cli_in_process(capsys, "rl", *no_prompts), "no usable prompt", "'prompt'")
    assert_clean_error(cli_in_process(capsys, "rl", "--resume", sft[0]), "not a `gptlab rl` run")
    assert_clean_error(cli_in_process(capsys, "rl", "--resume", tmp_path / "x", "--reward", "verse"), "--resume")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_chat_talks_with_an_rl_run(rl, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("帝京\n"))
    talk = cli_in_process(capsys, "chat", rl[0], "--max-tokens", "5", "--seed", "1", "--device", "cpu")
    assert talk.returncode == 0, talk.stderr
    assert talk.stdout.count("model> ") == 1 and talk.stderr == ""


def test_chat_completions_serve_an_rl_run(rl, tmp_path):
    import httpx

    with serving(rl[0], logs=tmp_path) as url:
        body = {"messages": [{"role": "user", "content": "帝京"}], "max_tokens": 6, "seed": 2}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")


def test_two_ranks_equal_one_process_with_double_accumulation(sft, runs, tmp_path):  # noqa: F811
    common = ["--from", sft[0], "--prompts", runs / "sft.jsonl", "--reward", "verse", *RL_ARGS]
    one = subprocess.run(
        [sys.executable, "-m", "gptlab", "rl", *map(str, common), "--out", str(tmp_path / "one"), "grad_accum=2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert one.returncode == 0, one.stderr
    two = torchrun("rl", *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert metrics(tmp_path / "one", "train_loss") == pytest.approx(metrics(tmp_path / "two", "train_loss"), rel=1e-5)
    w1, w2 = load_file(weights_path(tmp_path / "one")), load_file(weights_path(tmp_path / "two"))
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-6), name


def test_rl_with_a_reward_model_run(sft, runs, tmp_path, capsys):  # noqa: F811
    """--reward RM_RUN: a reward model from `gptlab reward` scores the answers (it is only read)."""
    rm_args = ["--max-steps", "2", "batch_size=4", "eval_interval=2", "held_out=4", "device=cpu"]
    made = cli_in_process(
        capsys, "reward", "--from", sft[0], "--data", runs / "pairs.jsonl", "--out", tmp_path / "rm", *rm_args
    )
    assert made.returncode == 0, made.stderr
    before = tree_digest(tmp_path / "rm")
    args = ["--from", sft[0], "--prompts", runs / "sft.jsonl", "--reward", tmp_path / "rm", "--out", tmp_path / "r"]
    done = cli_in_process(capsys, "rl", *args, *RL_ARGS[:2], "--max-steps", "2", *RL_ARGS[4:])
    assert done.returncode == 0, done.stderr
    assert tree_digest(tmp_path / "rm") == before
    rewards = metrics(tmp_path / "r", "reward")
    assert sorted(rewards) == [1, 2] and len(set(rewards.values())) == 2  # a model's scores, not the verse checker's 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["posttrain"]["reward"] == str(tmp_path / "rm")
    # A run that is not a reward model is refused before anything is written.
    refused = cli_in_process(capsys, "rl", *args[:5], sft[0], "--out", tmp_path / "s")
    assert_clean_error(refused, "not a reward model")
    assert not (tmp_path / "s").exists()
