"""Parameters, FLOPs and training memory, read from the model itself built on the meta device.

The meta device gives every tensor a shape and no storage, so even gpt3's 175B parameters are
counted, and a training step's saved activations traced, without memory. Nothing here restates the
architecture: a new variant is counted right because it is counted from the modules it builds.

FLOPs per token count multiply-adds as 2 FLOPs. Training costs 3x the forward pass (forward, then
backward for activations and for weights): 6 FLOPs per matmul weight, plus attention's q·k and
attention·v products, 2 * 2 * T * n_head * head_dim per layer forward (counted over the full T x T
square, as is usual, although the causal half is masked).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from gptlab.config import ModelConfig, RunConfig
from gptlab.model import Model, build_model

ROLE_NAMES = {"embedding": "embeddings", "head": "output head", "matrix": "hidden matrices", "vector": "vectors"}


@functools.lru_cache(maxsize=8)
def meta_model(cfg_key: tuple) -> Model:
    """The model of a config, built on the meta device (cached by the config's values)."""
    return build_model(ModelConfig(**dict(cfg_key)), "meta")


def _meta(cfg: ModelConfig) -> Model:
    return meta_model(tuple(sorted(vars(cfg).items())))


@dataclass
class ParamCount:
    """Parameters by role and by place (the tied unembedding counted once, as the token embedding)."""

    by_role: dict[str, int]
    by_place: dict[str, int]  # token embedding, position embedding, blocks, final norm, output head
    tied: bool

    @property
    def total(self) -> int:
        """Every distinct parameter."""
        return sum(self.by_role.values())


def _place(name: str) -> str:
    if name.startswith("blocks."):
        return "blocks"
    if name.startswith(("encoder.", "decoder.")):  # arch=encdec: each half's blocks
        return name.split(".")[0] + " blocks"
    if name.startswith("smear."):
        return "token embedding"  # its look-back works on the token embeddings
    return {
        "wte.weight": "token embedding",
        "wpe.weight": "position embedding",
        "wpe_source.weight": "position embedding",
        "ln_encoder.weight": "final norm",
        "ln_encoder.bias": "final norm",
        "lm_head.weight": "output head",
        "reward_head.weight": "reward head",
        "reward_head.bias": "reward head",
    }.get(name, "final norm")


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count the parameters of the model this config builds."""
    model = _meta(cfg)
    by_role = dict.fromkeys(ROLE_NAMES, 0)
    by_place: dict[str, int] = {}
    params = dict(model.named_parameters())
    for name, (role, _) in model.parameter_roles().items():
        n = params[name].numel()
        by_role[role] += n
        by_place[_place(name)] = by_place.get(_place(name), 0) + n
    return ParamCount(by_role, by_place, tied=cfg.tie_embeddings)


def matmul_weights(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix product per token: every Linear (the blocks' and the
    unembedding, tied or not); embeddings are lookups, not products."""
    model = _meta(cfg)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Forward and training FLOPs per token at context length seq_len (default block_size)."""
    T = seq_len or cfg.block_size
    model = _meta(cfg)
    forward_matmul = 2 * matmul_weights(cfg)
    forward_attention = sum(2 * 2 * T * a.n_head * a.head_dim for a in model.attention_layers())
    forward = forward_matmul + forward_attention
    return {"forward": forward, "forward_attention": forward_attention, "train": 3 * forward}


# Bytes of optimizer state per parameter, in float32 units, by optimizer and role.
def _state_per_param(optimizer: str, role: str, momentum: float) -> int:
    if optimizer == "sgd":
        return 1 if momentum else 0
    if optimizer == "muon" and role == "matrix":
        return 1  # one momentum buffer
    return 2  # AdamW: first and second moments


@dataclass
class MemoryEstimate:
    """Bytes a training step needs on one device, by part."""

    weights: int
    gradients: int
    optimizer: dict[str, int]  # optimizer -> bytes of its state
    activations_per_sample: int  # saved for backward, per window of T tokens
    batch_size: int
    precision: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def activations(self) -> int:
        """Saved activations of a micro-batch."""
        return self.activations_per_sample * self.batch_size

    @property
    def fixed(self) -> int:
        """What does not grow with the batch: weights, gradients, optimizer state."""
        return self.weights + self.gradients + sum(self.optimizer.values())

    @property
    def total(self) -> int:
        """Everything, at this batch size."""
        return self.fixed + self.activations

    def largest_batch(self, memory: int) -> int:
        """The largest micro-batch whose step fits memory bytes (0: not even one window)."""
        return max(0, (memory - self.fixed) // max(1, self.activations_per_sample))


def _saved_activation_bytes(cfg: ModelConfig, T: int, dtype: torch.dtype | None) -> int:
    """Bytes the autograd graph keeps for backward for one window of T tokens, traced on the meta
    device (parameters excluded; every storage counted once, however many views it has), plus the
    logits and their gradient, which live at the same time at the loss.

    Autocast does not act on meta tensors, so a 16-bit precision is traced with the model cast to it
    (autocast keeps a few reductions in float32: a slight under-count there)."""
    model = build_model(cfg, "meta").to(dtype) if dtype is not None else _meta(cfg)
    model.train()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    x = torch.zeros(1, T, dtype=torch.long, device="meta")
    source = {"source": x} if cfg.arch == "encdec" else {}  # an encoder-decoder reads a source as long
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(x, x, **source)
    logits_bytes = logits.numel() * 4  # the loss works in float32
    return sum(seen.values()) + 2 * logits_bytes


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def memory_estimate(cfg: RunConfig, precision: str = "fp32") -> MemoryEstimate:
    """The memory of one training step at cfg's batch size: float32 weights and gradients (autocast
    keeps float32 master weights), optimizer state by role, activations traced at B x T."""
    model = _meta(cfg.model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    optimizer: dict[str, int] = {}
    opt_name = cfg.train.optimizer
    for name, (role, _) in model.parameter_roles().items():
        which = "muon" if opt_name == "muon" and role == "matrix" else ("sgd" if opt_name == "sgd" else "adamw")
        optimizer[which] = optimizer.get(which, 0) + 4 * params[name].numel() * _state_per_param(
            opt_name, role, cfg.train.momentum
        )
    per_sample = _saved_activation_bytes(cfg.model, cfg.model.block_size, PRECISIONS[precision])
    return MemoryEstimate(4 * total, 4 * total, optimizer, per_sample, cfg.train.batch_size, precision)


def parse_bytes(text: str) -> int:
    """'24GB', '24GiB', '512MB', '1.5e9' -> bytes (GB = 10^9, GiB = 2^30)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?b?|b)?\s*", text.lower())
    if not match:
        raise ValueError(f"not a memory size: {text!r} (e.g. 24GB, 80GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "b").rstrip("b") or "b"
    scale = {"b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(number * scale[unit])


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def describe(cfg: ModelConfig) -> list[str]:
    """The lines printed at the start of training and by `gptlab info`."""
    p, f = count_params(cfg), flops_per_token(cfg)
    variant = (
        f"position={cfg.position}, norm={cfg.norm}, qk_norm={str(cfg.qk_norm).lower()}, mlp={cfg.mlp}, "
        f"head={'tied' if cfg.tie_embeddings else 'untied'}"
        + (f", logit_softcap={cfg.logit_softcap:g}" if cfg.logit_softcap else "")
        + (", value_embeds=true" if cfg.value_embeds else "")
        + (", resid_mix=true" if cfg.resid_mix else "")
        + (", smear=true" if cfg.smear else "")
    )
    shape = f"{cfg.n_layer} layers"
    if cfg.arch == "encdec":
        shape = f"encoder–decoder, {cfg.n_layer} + {cfg.n_layer} layers"
    lines = [
        f"model: {shape}, {cfg.n_head} heads, n_embd={cfg.n_embd}, block_size={cfg.block_size}, "
        f"vocab_size={cfg.vocab_size}",
        f"  {variant}",
        f"parameters: {p.total:,} ({human(p.total)})",
    ]
    for place, n in p.by_place.items():
        note = " (unembedding tied to it)" if place == "token embedding" and p.tied else ""
        lines.append(f"  {place + ':':20s}{n:>14,}{note}")
    lines.append("  by role: " + ", ".join(f"{ROLE_NAMES[r]} {n:,}" for r, n in p.by_role.items() if n))
    lines.append(
        f"FLOPs per token: forward {human(f['forward'])} (attention {human(f['forward_attention'])}), "
        f"training {human(f['train'])} (forward + backward)"
    )
    return lines


def describe_memory(cfg: RunConfig, precision: str, memory: int | None = None) -> list[str]:
    """The training-memory lines of `gptlab info` (and the largest batch that fits memory, if given)."""
    m = memory_estimate(cfg, precision)
    gib = lambda b: f"{b / 2**30:,.2f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"  # noqa: E731
    lines = [
        f"training memory per device ({precision}, B={m.batch_size}, T={cfg.model.block_size}): {gib(m.total)}",
        f"  weights {gib(m.weights)}, gradients {gib(m.gradients)}, "
        + ", ".join(f"{name} state {gib(b)}" for name, b in m.optimizer.items()),
        f"  activations {gib(m.activations)} ({gib(m.activations_per_sample)} per window)",
    ]
    if memory is not None:
        b = m.largest_batch(memory)
        lines.append(
            f"largest batch in {gib(memory)}: B={b}"
            if b
            else f"not even B=1 fits in {gib(memory)}: weights, gradients and optimizer state alone need {gib(m.fixed)}"
        )
    return lines
