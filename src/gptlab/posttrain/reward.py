"""The reward model: a run's transformer with a scalar head (ModelConfig.reward_head), trained on
preference pairs with the Bradley–Terry loss, so that it scores a chosen answer above a rejected one.

    P(chosen preferred) = sigmoid(r(prompt, chosen) - r(prompt, rejected))
    loss = -log sigmoid(r_chosen - r_rejected)                      (ln 2 while both score alike)

r reads the final norm's output at the last token of the conversation as the chat template writes it
(the user's prompt, the assistant's answer, the end of turn), so a score sees the whole answer and
whether it ended. Held-out pair accuracy is the share of pairs whose chosen answer scores higher.

For reinforcement learning and serving: load_reward_model(RM_RUN) gives a RewardModel, a callable
(prompts, completions) -> rewards, a float32 tensor (N,) on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.data.batch import Batch, pad_rows
from gptlab.errors import GptlabError
from gptlab.posttrain.template import ChatTemplate, Message
from gptlab.precision import autocast
from gptlab.runs import load_run

SCORE_ROWS = 32  # conversations per forward pass when scoring


@dataclass
class PairScores:
    """Bradley–Terry's loss and what it says about the pairs of one batch."""

    loss: torch.Tensor  # mean over pairs
    margin: torch.Tensor  # mean reward of chosen minus rejected
    accuracy: torch.Tensor  # share of pairs whose chosen answer scores higher


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> PairScores:
    """The Bradley–Terry loss of rewards (B,) for the chosen and (B,) for the rejected answers."""
    z = chosen.float() - rejected.float()
    return PairScores(-F.logsigmoid(z).mean(), z.mean(), (z > 0).float().mean())


def last_positions(batch: Batch) -> torch.Tensor:
    """Each row's last real position in a batch built by posttrain/examples.collate from whole
    conversations: inputs hold ids[:-1], so the conversation's last token is the last counted target,
    and the row is read one position earlier after the input is extended by it (see pair_inputs)."""
    assert batch.loss_mask is not None  # collate always masks
    mask = batch.loss_mask.long()
    width = mask.shape[1]
    # The index of the last True per row (every row has an answer: encode_example keeps none without).
    return width - 1 - mask.flip(1).argmax(1)


def pair_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, reward_at) for a collated batch: the whole conversations (inputs with the last target
    appended) and the position of each row's last token."""
    last = last_positions(batch)
    ids = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)
    rows = torch.arange(ids.shape[0], device=ids.device)
    ids[rows, last + 1] = batch.targets[rows, last]  # the final token sits one past its input position
    return ids, last + 1


class RewardObjective:
    """The trainer's objective for a reward model: Bradley–Terry on batches of pairs (rows
    [chosen..., rejected...], as posttrain/examples.pair_batch builds them)."""

    def measure(self, model: nn.Module, batch: Batch) -> PairScores:
        """Loss, margin and accuracy of the batch's pairs."""
        ids, at = pair_inputs(batch)
        rewards, _ = model(ids, reward_at=at)
        chosen, rejected = rewards.chunk(2)
        return bradley_terry(chosen, rejected)

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.measure(model, batch).loss


def conversation_ids(template: ChatTemplate, prompt: str, completion: str, block_size: int) -> list[int]:
    """A (prompt, completion) as the reward model reads it: the chat template's conversation, as in
    training (a completion counts as a finished turn), its last block_size tokens where longer."""
    ids, _ = template.encode([Message("user", prompt), Message("assistant", completion)])
    return ids[-block_size:]  # a too-long conversation keeps its end, where the reward is read


@torch.no_grad()
def score_rows(model: nn.Module, rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """The reward of each row of ids (read at its last token): float32 (N,) on the CPU."""
    out = [torch.zeros(0)]
    for i in range(0, len(rows), SCORE_ROWS):
        chunk = rows[i : i + SCORE_ROWS]
        ids, _ = pad_rows(chunk, device=device)
        at = torch.tensor([len(r) - 1 for r in chunk], device=device)
        with autocast(device):
            rewards, _ = model(ids, reward_at=at)
        out.append(rewards.float().cpu())
    return torch.cat(out)


class RewardModel:
    """A trained reward model, ready to score: call it with prompts and completions (equal lists)."""

    def __init__(self, model: nn.Module, template: ChatTemplate, device: torch.device, block_size: int):
        self.model, self.template, self.device, self.block_size = model, template, device, block_size

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """The reward of each (prompt, completion): float32 (N,) on the CPU."""
        if len(prompts) != len(completions):
            raise GptlabError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [conversation_ids(self.template, p, c, self.block_size) for p, c in zip(prompts, completions)]
        return score_rows(self.model, rows, self.device)


def load_reward_model(run: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward-model run (`gptlab reward`) as a RewardModel; one line if the run is not one."""
    loaded = load_run(run, device)
    if not loaded.config.model.reward_head:
        raise GptlabError(f"{run} is not a reward model (train one with `gptlab reward`)")
    template = ChatTemplate(loaded.tokenizer)
    return RewardModel(loaded.model, template, torch.device(device), loaded.config.model.block_size)
