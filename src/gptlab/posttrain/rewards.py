"""What scores an RL answer: the verse checker (posttrain/verse.py) or a reward-model run.

A reward maps the batch's prompts (ids as the policy read them, and the user's text) and the answers
(posttrain/rollouts.Rollout) to one number per answer. An answer that did not end by itself (it ran
into the token limit) loses UNENDED_PENALTY: a poem has to end, and as verse scores lie in [0, 1],
such an answer ranks below every answer that ended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gptlab.errors import GptlabError
from gptlab.posttrain import verse
from gptlab.posttrain.rollouts import Rollout
from gptlab.tokenizers import Tokenizer

# (prompt ids, prompt texts, answers) -> (N,) float32 on the CPU; answer i answers prompt answers[i].prompt
Reward = Callable[[Sequence[list[int]], Sequence[str], Sequence[Rollout]], torch.Tensor]
VERSE = "verse"
UNENDED_PENALTY = 1.0


def verse_reward(prompt_ids: Sequence[list[int]], prompts: Sequence[str], answers: Sequence[Rollout]) -> torch.Tensor:
    """The verse checker's score of each answer's text, in [0, 1] (the prompt plays no part)."""
    return torch.tensor([verse.score(a.text) for a in answers], dtype=torch.float32)


def load_reward(spec: str, tokenizer: Tokenizer, end: int, device: torch.device | str = "cpu") -> Reward:
    """The reward named by spec: "verse", or the path of a reward-model run (`gptlab reward`) that
    reads the policy's tokenizer (tokenizer; end is its end-of-turn id)."""
    if spec == VERSE:
        return verse_reward
    from gptlab.posttrain.reward import load_reward_model, score_rows  # a model only when a run is asked for

    rm = load_reward_model(spec, device)
    if rm.template.tokenizer.to_dict() != tokenizer.to_dict():
        raise GptlabError(
            f"the reward model {spec} reads another tokenizer than the policy; train it from the same run"
        )
    block = rm.block_size

    def reward_model(
        prompt_ids: Sequence[list[int]], prompts: Sequence[str], answers: Sequence[Rollout]
    ) -> torch.Tensor:
        # The ids the policy read and wrote, as the reward model was trained on them: the conversation
        # with a finished turn (an unended answer is closed), its last block_size tokens.
        rows = [(prompt_ids[a.prompt] + a.ids + ([] if a.ended else [end]))[-block:] for a in answers]
        return score_rows(rm.model, rows, rm.device)

    return reward_model


def score_rollouts(
    reward: Reward, prompt_ids: Sequence[list[int]], prompts: Sequence[str], answers: Sequence[Rollout]
) -> torch.Tensor:
    """Each answer's reward (N,) on the CPU, less UNENDED_PENALTY for an answer that did not end by itself."""
    values = reward(prompt_ids, prompts, answers).float().cpu()
    return values - UNENDED_PENALTY * torch.tensor([not r.ended for r in answers], dtype=torch.float32)
