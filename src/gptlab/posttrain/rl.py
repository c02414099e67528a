"""`gptlab rl`: reinforcement learning with GRPO (posttrain/grpo.py) as a training session, the same
loop, checkpoints, resume, metrics and DDP as `finetune` and `align` (posttrain/session.py).

Each micro-step takes batch_size prompts from the prompt loader, and the objective answers each
group_size times through the inference engine (posttrain/rollouts.py), scores the answers
(posttrain/rewards.py), and computes GRPO's loss on them against a frozen copy of the starting run.
Exact resume: the prompt loader's state says how many batches it has handed out, and a batch's
rollouts draw with a seed that follows from that count, so a resumed run draws the same answers.

Several processes (DDP): each rank answers its own prompts (the loader gives each rank its own
batches) with the unwrapped model, and computes the loss through the wrapped one, so gradients are
averaged as in any training. FSDP is refused: ranks generating answers of different lengths would
not take part in the same parameter gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.data.corpora import SkipReport
from gptlab.errors import GptlabError
from gptlab.inference.decoding import SamplingParams
from gptlab.model import build_model
from gptlab.model.gpt import GPT
from gptlab.model.loss import lm_loss
from gptlab.posttrain.examples import Example, RecordLoader, collate, held_out
from gptlab.posttrain.grow import load_grown
from gptlab.posttrain.grpo import group_advantages, grpo_loss
from gptlab.posttrain.records import read_prompts
from gptlab.posttrain.rewards import Reward, load_reward, score_rollouts
from gptlab.posttrain.rollouts import Rollout, rollouts
from gptlab.posttrain.session import PosttrainSession, file_sha256
from gptlab.posttrain.template import ChatTemplate, has_chat_tokens
from gptlab.runs import TOKENIZER
from gptlab.tokenizers import Tokenizer, load_tokenizer

SEED_STRIDE = 1 << 20  # seeds between two prompt batches: more than any batch's answers (sequence i draws seed + i)


@dataclass
class Prompt:
    """One prompt: the ids that ask for the assistant's answer, and the user's text (for the reward)."""

    ids: list[int]
    text: str


@dataclass
class PromptBatch:
    """What the prompt loader hands a micro-step: prompts, and the seed their answers draw with."""

    prompts: list[Prompt]
    seed: int

    def to(self, device: torch.device, non_blocking: bool = False) -> PromptBatch:
        """As it is: prompts become tensors only once they are answered."""
        return self

    def pin_memory(self) -> PromptBatch:
        """As it is (see to)."""
        return self


class PromptLoader:
    """Batches of prompts in shuffled epochs (posttrain/examples.RecordLoader), each with its rollout seed."""

    def __init__(self, prompts: list[Prompt], batch_size: int, seed: int):
        self.records = RecordLoader(prompts, batch_size, seed)
        self.seed, self.draws = seed, 0

    def next_batch(self) -> PromptBatch:
        """The next batch_size prompts and the seed of their answers (from the number of batches drawn)."""
        self.draws += 1
        return PromptBatch(self.records.next_items(), self.seed + self.draws * SEED_STRIDE)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands (JSON-able)."""
        return {**self.records.state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state_dict()."""
        self.records.load_state_dict(state)
        self.draws = int(state["draws"])


def answer_logps(model: nn.Module, rows: list[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities (B, T) of each row's answer tokens under model, and the mask (B, T)
    of those tokens (the rows right-padded, as any batch)."""
    batch = collate(rows).to(device)
    logits, _ = model(batch.inputs)
    targets = batch.loss_targets()
    assert batch.loss_mask is not None  # collate always masks the prompt out
    return -lm_loss(logits, targets, reduction="none").view(targets.shape), batch.loss_mask


class GRPOObjective:
    """The trainer's objective for RL: answer a batch of prompts, score the answers, GRPO's loss.

    policy: the unwrapped model (answers are drawn from it); the loss goes through the model the
    trainer hands in (maybe DDP-wrapped). Figures of the answers pile up for the progress line."""

    def __init__(
        self,
        policy: GPT,
        reference: nn.Module,
        tokenizer: Tokenizer,
        end: int,
        reward: Reward,
        group: int,
        params: SamplingParams,
        clip: float,
        kl: float,
    ):
        self.policy, self.reference = policy, reference.eval().requires_grad_(False)
        self.tokenizer, self.end, self.reward, self.group = tokenizer, end, reward, group
        self.params, self.clip, self.kl = params, clip, kl
        self.figures: list[dict[str, float]] = []  # one per micro-step since the last progress line
        self.last: list[tuple[str, Rollout, float]] = []  # the latest micro-step's answers, for samples.txt

    def __call__(self, model: nn.Module, batch: PromptBatch) -> torch.Tensor:
        device = next(self.policy.parameters()).device
        params = SamplingParams(**{**vars(self.params), "seed": batch.seed})
        prompts = [p.ids for p in batch.prompts]
        with torch.no_grad():
            answers = rollouts(self.policy, self.tokenizer, prompts, self.group, params, self.end)
        texts = [p.text for p in batch.prompts]
        rewards = score_rollouts(self.reward, prompts, texts, answers)
        # A row is prompt + answer; only the answer's tokens (its end-of-turn included) are trained.
        rows = [
            Example(prompts[r.prompt] + r.ids, [False] * len(prompts[r.prompt]) + [True] * len(r.ids)) for r in answers
        ]
        logps, mask = answer_logps(model, rows, device)
        with torch.no_grad():
            ref_logps, _ = answer_logps(self.reference, rows, device)
        # One optimizer step per batch of answers: the policy that drew them is the one being trained.
        out = grpo_loss(
            logps, logps.detach(), ref_logps, group_advantages(rewards, self.group).to(device), mask, self.clip, self.kl
        )
        self.figures.append(
            {
                "reward": rewards.mean().item(),
                "kl": out.kl.item(),
                "answer_tokens": sum(len(r.ids) for r in answers) / len(answers),
                "ended": sum(r.ended for r in answers) / len(answers),
            }
        )
        self.last = [(texts[r.prompt], r, v) for r, v in zip(answers, rewards.tolist())]
        return out.loss

    def take_figures(self) -> dict[str, float]:
        """Means of the answers' figures since the last call (and forget them)."""
        if not self.figures:
            return {}
        means = {k: sum(f[k] for f in self.figures) / len(self.figures) for k in self.figures[0]}
        self.figures = []
        return means


class RLSession(PosttrainSession):
    """`gptlab rl`: reinforcement learning from rewards with GRPO."""

    command = "rl"

    def load_data(self) -> None:
        post, run = self.cfg.posttrain, self.run
        if self.tcfg.fsdp:
            raise GptlabError("rl runs with DDP (fsdp=false): FSDP ranks cannot draw answers of different lengths")
        self.tokenizer = load_tokenizer((run if self.resume else Path(post.base)) / TOKENIZER)
        if not has_chat_tokens(self.tokenizer):
            raise GptlabError(
                f"{post.base} has no chat template (it is a base model); fine-tune it first with "
                "`gptlab finetune --from RUN --data FILE --out RUN2`, then run rl from that run"
            )
        self.cfg.model.vocab_size = self.tokenizer.vocab_size
        self.template = ChatTemplate(self.tokenizer)
        self.sha256 = file_sha256(post.data)
        if self.resume and self._saved_description().get("sha256") != self.sha256:
            raise GptlabError(
                f"{post.data} changed since {run} started training on it; resume needs the "
                "same prompts (start a new run for new prompts)"
            )
        self.report = SkipReport()
        prompts = []
        # A prompt and its longest answer must fit one context window to be trained on.
        room = self.cfg.model.block_size + 1 - post.rollout_tokens
        for conversation in read_prompts(post.data, self.report):
            try:
                ids = self.template.prompt(conversation)
            except GptlabError:  # a char tokenizer meets a character its corpus never had
                self.report.skip("prompt with characters outside the tokenizer's vocabulary")
                continue
            if len(ids) > room:
                self.report.skip(f"prompt longer than block_size+1-rollout_tokens={room} tokens")
                continue
            prompts.append(Prompt(ids, conversation[-1].content))
        if not prompts:
            raise GptlabError(f"{post.data} holds no usable prompts ({'; '.join(self.report.lines())})")
        train_ids, val_ids = held_out(len(prompts), post.held_out, self.tcfg.seed)
        self.train_items = [prompts[i] for i in train_ids]
        self.val_items = [prompts[i] for i in val_ids]
        for line in self.report.lines():
            self.say(line)
        self.say(
            f"{len(self.train_items):,} training and {len(self.val_items):,} held-out prompts from {post.data}, "
            f"{post.group_size} answers each, reward {post.reward}"
        )

    def objective(self) -> GRPOObjective:  # type: ignore[override]
        post = self.cfg.posttrain
        base = self._base_model
        self.__dict__.pop("_base_model", None)
        # The reference is the starting point, frozen: the base run's weights, even on resume.
        reference = build_model(self.cfg.model).to(self.device)
        load_grown(base, reference)
        model = self.model
        assert isinstance(model, GPT)  # posttrain/run.py refuses an encoder–decoder base
        self.reward = load_reward(post.reward, self.tokenizer, self.template.end_id, self.device)
        params = SamplingParams(post.rollout_tokens, post.rollout_temperature)
        self.grpo = GRPOObjective(
            model,
            reference,
            self.tokenizer,
            self.template.end_id,
            self.reward,
            post.group_size,
            params,
            post.clip,
            post.kl,
        )
        return self.grpo

    def train_loader(self) -> PromptLoader:  # type: ignore[override]
        return PromptLoader(self.train_items, self.tcfg.batch_size, self.tcfg.seed)

    def step_figures(self) -> dict[str, float]:
        """Mean reward, KL and answer length of the rollouts since the last progress line."""
        return self.grpo.take_figures()

    # --- evaluation ---

    def evaluate_and_sample(self, step: int) -> dict[str, float]:
        """One answer to each held-out prompt (the same seed every time): mean reward, share that
        ended, mean length; a few answers with their rewards in samples.txt."""
        post, tcfg = self.cfg.posttrain, self.tcfg
        params = SamplingParams(post.rollout_tokens, tcfg.sample_temperature, tcfg.sample_top_k, seed=tcfg.seed)
        model = self.model
        assert isinstance(model, GPT)
        prompts = [p.ids for p in self.val_items]
        with torch.no_grad():
            answers = rollouts(model, self.tokenizer, prompts, 1, params, self.template.end_id)
        texts = [p.text for p in self.val_items]
        rewards = score_rollouts(self.reward, prompts, texts, answers).tolist()
        record: dict[str, Any] = {
            "step": step,
            "tokens_seen": self.state.tokens_seen,
            "elapsed_s": round(self.state.elapsed_s, 3),
            "val_reward": sum(rewards) / len(rewards),
            "val_ended": sum(a.ended for a in answers) / len(answers),
            "val_answer_tokens": sum(len(a.ids) for a in answers) / len(answers),
        }
        self.say(
            f"step {step}: held-out reward {record['val_reward']:.3f}, {record['val_ended']:.0%} ended by "
            f"themselves, {record['val_answer_tokens']:.1f} tokens per answer"
        )
        n = post.sample_prompts
        shown = [(texts[a.prompt], a, r) for a, r in zip(answers[:n], rewards[:n])]
        lines = [_shown("held-out", shown)]
        if self.grpo.last and step > 0:
            lines.append(_shown("training rollouts", self.grpo.last[: n * post.group_size]))
        text = "\n".join(lines)
        self.say(f"--- answers at step {step} ---\n{text}---")
        if self.main:
            with open(self.run / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"=== step {step} ===\n{text}\n")
        if self.metrics is not None:  # rank 0
            self.metrics.write(record)
        return {"val": record["val_reward"]}


def _shown(what: str, answers: list[tuple[str, Rollout, float]]) -> str:
    """Answers with their prompts and rewards, as samples.txt keeps them."""
    out = [f"[{what}]"]
    for prompt, a, reward in answers:
        out.append(f"> {prompt}\n{a.text}{'' if a.ended else ' [no end of turn]'}\n  reward {reward:.3f}")
    return "\n".join(out) + "\n"
