"""A pretrained model's weights in a model whose vocabulary has grown by the chat template's tokens.

The pretrained rows keep their ids and values. Each new row of the token embedding (and of the
output head when it is not tied to it) starts as the mean of the existing rows: as an input it is
an "average token", and as an output its logit starts at the mean logit, neither dominating the
pretrained distribution nor unreachable, so fine-tuning can learn it in a few hundred steps.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.errors import GptlabError

VOCAB_ROWS = ("wte.weight", "lm_head.weight")  # the matrices with one row per token id


def load_grown(source: nn.Module, target: nn.Module) -> None:
    """Copy source's weights into target, whose vocabulary may be larger (new rows: the mean)."""
    state = source.state_dict()
    wanted = target.state_dict()
    for name in VOCAB_ROWS:
        have, need = state[name], wanted[name]
        if need.shape[0] > have.shape[0]:
            mean = have.mean(dim=0, keepdim=True)
            state[name] = torch.cat([have, mean.expand(need.shape[0] - have.shape[0], -1)])
    try:
        # A reward model's scalar head is new: it keeps its initialisation; nothing else may be missing.
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise GptlabError(
            f"the base run's weights do not fit this model: {str(exc).splitlines()[-1].strip()}"
        ) from None
    missing = [name for name in missing if not name.startswith("reward_head.")]
    if missing or unexpected:
        raise GptlabError(
            f"the base run's weights do not fit this model: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}"
        )
