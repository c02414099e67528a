"""What scores an RL answer: the verse checker (posttrain/verse.py) or a reward-model run.

A reward is a function of the prompts and the answers' texts -> one number per answer. An answer
that did not end by itself (it ran into the token limit) loses UNENDED_PENALTY: a poem has to end, and
as verse scores lie in [0, 1], such an answer ranks below every answer that ended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gptlab.posttrain import verse
from gptlab.posttrain.rollouts import Rollout

Reward = Callable[[Sequence[str], Sequence[str]], torch.Tensor]  # (prompts, answers) -> (N,) float32
VERSE = "verse"
UNENDED_PENALTY = 1.0


def verse_reward(prompts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """The verse checker's score of each answer, in [0, 1] (the prompt plays no part)."""
    return torch.tensor([verse.score(a) for a in answers], dtype=torch.float32)


def load_reward(spec: str, device: torch.device | str = "cpu") -> Reward:
    """The reward named by spec: "verse", or the path of a reward-model run (`gptlab reward`)."""
    if spec == VERSE:
        return verse_reward
    from gptlab.posttrain.reward import load_reward_model  # torch models only when a run is asked for

    model = load_reward_model(spec, device)
    return lambda prompts, answers: model(list(prompts), list(answers))


def score_rollouts(reward: Reward, prompts: Sequence[str], answers: Sequence[Rollout]) -> torch.Tensor:
    """Each answer's reward (N,) on the CPU, less UNENDED_PENALTY for an answer that did not end by itself."""
    values = reward([prompts[r.prompt] for r in answers], [r.text for r in answers]).float().cpu()
    return values - UNENDED_PENALTY * torch.tensor([not r.ended for r in answers], dtype=torch.float32)
