"""Schedules on the batch's shape: windows (sequence length) and batches that start small and grow.

Early in training a model learns mostly local statistics (which character follows which), and a
short window or a small batch teaches those nearly as well as a full one at a fraction of the step's
cost; later, long-range structure and a quieter gradient pay for the full shape. With seq_len_start
(or batch_size_start) set, the windows of step s are T(s) tokens long and a micro-step holds B(s) of
them, both growing linearly from the start size to block_size (batch_size) over the first
ramp_fraction of max_steps, then staying there. Windows grow in multiples of 8 tokens, so a compiled
model meets few distinct shapes.

The shape is a pure function of the step and the config, computed in integers: every rank draws the
same shape, and a resumed run draws exactly what the uninterrupted one did. The learning rate does
not follow the shape; evaluation, sampling and serving always use the full block_size (the model's
context is unchanged: only the training windows are shorter). The ramp is a share of max_steps: a
resume given another --max-steps moves its end, as it moves the learning rate schedule's.
"""

from __future__ import annotations

import numpy as np

from gptlab.config import TrainConfig

SEQ_MULTIPLE = 8  # windows grow in steps of this many tokens


def ramp_on(tcfg: TrainConfig) -> bool:
    """Whether either schedule is on (a start size is set)."""
    return bool(tcfg.seq_len_start or tcfg.batch_size_start)


def ramp_steps(tcfg: TrainConfig) -> int:
    """Steps over which the shape grows: the first ramp_fraction of max_steps (at least one)."""
    return max(1, round(tcfg.ramp_fraction * tcfg.max_steps))


def _grown(start: int, full: int, steps: np.ndarray, ramp: int, multiple: int) -> np.ndarray:
    """Sizes at these steps: start growing linearly to full over ramp steps, rounded down to a multiple
    (never below start); full from the ramp's end on, and always when start is 0 (off)."""
    if not start:
        return np.full(steps.shape, full, dtype=np.int64)
    size = start + (full - start) * steps // ramp  # integers: the same on every rank and machine
    return np.where(steps >= ramp, full, np.maximum(start, size - size % multiple))


def _shapes(steps: np.ndarray, tcfg: TrainConfig, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) at each of these steps."""
    ramp = ramp_steps(tcfg)
    return (
        _grown(tcfg.batch_size_start, tcfg.batch_size, steps, ramp, 1),
        _grown(tcfg.seq_len_start, block_size, steps, ramp, SEQ_MULTIPLE),
    )


def shape_at(step: int, tcfg: TrainConfig, block_size: int) -> tuple[int, int]:
    """(windows per micro-step B, window length T) that step trains on (steps count from 0)."""
    batch, window = _shapes(np.array([step], dtype=np.int64), tcfg, block_size)
    return int(batch[0]), int(window[0])


def step_tokens(step: int, tcfg: TrainConfig, block_size: int, micro_batches: int) -> int:
    """Tokens that step trains on, over micro_batches micro-batches (grad_accum x world size)."""
    batch, window = shape_at(step, tcfg, block_size)
    return batch * window * micro_batches


def tokens_between(first: int, last: int, tcfg: TrainConfig, block_size: int, micro_batches: int) -> int:
    """Tokens steps first..last-1 train on: summed over the ramp's steps, the full shape's after it."""
    ramp_end = max(first, min(last, ramp_steps(tcfg) if ramp_on(tcfg) else first))
    batch, window = _shapes(np.arange(first, ramp_end, dtype=np.int64), tcfg, block_size)
    full = tcfg.batch_size * block_size
    return (int((batch * window).sum()) + full * (last - ramp_end)) * micro_batches


def describe_ramp(tcfg: TrainConfig, block_size: int) -> str | None:
    """One line saying how the training shape grows, or None when it does not."""
    if not ramp_on(tcfg):
        return None
    parts = []
    if tcfg.seq_len_start:
        parts.append(f"windows grow from {tcfg.seq_len_start} to {block_size} tokens (in steps of {SEQ_MULTIPLE})")
    if tcfg.batch_size_start:
        parts.append(f"batches from {tcfg.batch_size_start} to {tcfg.batch_size} windows")
    return (
        f"shape schedule: {' and '.join(parts)} over the first {ramp_steps(tcfg):,} of {tcfg.max_steps:,} steps "
        f"(ramp_fraction {tcfg.ramp_fraction:g}); learning rate unchanged, evaluation at the full shape"
    )
