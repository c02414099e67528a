"""Recording mode of the layers: every named intermediate of one forward pass, as the modules compute it.

Each module of the network (the model, Block, attention, MLP, Rotary) is Recordable: its forward
hands each stage to `self._rec(name, tensor, axes, op)`, which does nothing while the module's
`record` is None, the default (one call and one `is not None` test per stage, no other work).
`recording(model, recorder)` points each module's `record` at the recorder for one forward pass;
the module hands it each tensor it computes, named by the module, with its axes in symbols (T
positions, C channels, H heads, D head channels, F MLP hidden width, V vocabulary) and the operation
that produced it. Nothing is recomputed: the values are those the forward pass uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

# A module's recorder while recording() is on: (name, tensor, axes, operation[, module kind]).
Record = Callable[..., None]


@dataclass(eq=False)  # stages are told apart by position in the trace, never by their tensors
class Stage:
    """One intermediate of the forward pass (the first row of the batch)."""

    name: str  # module path and the module's own name for it, e.g. "blocks.0.attn.weights"
    module: str  # the class of the module that computed it, e.g. "RMSNorm", "CausalSelfAttention"
    axes: str  # its shape in symbols, e.g. "H T T" or "T 3C"
    op: str  # the operation that produced it, with its operands' shapes, e.g. "[T×C] · [C×3C]"
    shape: tuple[int, ...]
    stats: dict[str, float]  # mean, std, min, max over its finite values
    value: torch.Tensor | None  # None when the recorder was asked not to keep it
    position: int | None = None  # when set, value holds only this position's slice (its first T axis)


def summary(value: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum of a tensor's finite values (a masked score is -inf)."""
    v = value.detach().float()
    if not math.isfinite(v.sum().item()):  # only then pay for picking the finite values out
        v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": v.mean().item(), "std": v.std(unbiased=False).item(), "min": v.min().item(), "max": v.max().item()}


@dataclass
class Recorder:
    """Collects the stages of a forward pass in the order they are computed.

    keep(index, name) says whether to hold a stage's tensor (default: all); statistics are always
    kept, so a page can list every stage of a large model while holding one tensor. With `at`, only
    that position's slice is held (a long prompt's T×T attention maps are never kept whole).
    """

    keep: Callable[[int, str], bool] = lambda index, name: True
    at: int | None = None
    stages: list[Stage] = field(default_factory=list)

    def scoped(self, prefix: str, module: nn.Module) -> Callable[..., None]:
        """The `record` function of one module: names its stages under the module's path."""
        # Operations are written with their bias term (x · W + b): a module whose matrices have none drops it.
        unbiased = not any(isinstance(m, nn.Linear) and m.bias is not None for m in module.children())

        def record(name: str, value: torch.Tensor, axes: str, op: str, module_name: str | None = None) -> None:
            full = f"{prefix}.{name}" if prefix else name
            if unbiased:
                op = op.removesuffix(" + b")
            # The batch's first sequence; a value with no batch axis (positions shared by every row) whole.
            row = value.detach()[0] if value.dim() > len(axes.split()) else value.detach()
            kept = row if self.keep(len(self.stages), full) else None
            at = self.at if "T" in axes.split() else None  # the position sliced out, if any
            if kept is not None and at is not None:
                kept = kept.select(axes.split().index("T"), at).clone()  # the slice alone, not a view
            self.stages.append(
                Stage(
                    full,
                    module_name or type(module).__name__,
                    axes,
                    op,
                    tuple(row.shape),
                    summary(row),
                    kept,
                    at,
                )
            )

        return record


class Recordable(nn.Module):
    """A module that hands the stages of its forward pass to a recorder while recording() is on."""

    record: Record | None = None  # set by recording() for one forward pass

    def _rec(self, name: str, value: torch.Tensor, axes: str, op: str, kind: str | None = None) -> None:
        """Hand one stage to the recorder; nothing while recording is off. kind: the module class to
        name when it is not this module's own (e.g. "Embedding" for a stage of the model's wte)."""
        if self.record is not None:
            self.record(name, value, axes, op, kind)

    def _rec_norm(self, name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """Hand over the stages of this module's norm `name` (a submodule), which gave out for x."""
        if self.record is not None:
            record_norm(self.record, name, getattr(self, name), x, out)


def record_norm(record: Record, name: str, norm: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    """A norm's input statistics (what it divides by, and subtracts for LayerNorm) and its output.

    The statistics describe the input; the output is the norm module's own.
    """
    kind = type(norm).__name__
    if isinstance(norm, nn.RMSNorm):
        record(f"{name}.in_rms", x.float().square().mean(-1).sqrt(), "T", "√mean(x²) over C", kind)
        record(f"{name}.{kind.lower()}", out, "T C", "x / rms · γ", kind)
    else:
        record(f"{name}.in_mean", x.float().mean(-1), "T", "mean of x over C", kind)
        record(f"{name}.in_std", x.float().std(-1, unbiased=False), "T", "std of x over C", kind)
        record(f"{name}.{kind.lower()}", out, "T C", "(x − mean) / std · γ + β", kind)


@contextmanager
def recording(model: nn.Module, recorder: Recorder) -> Iterator[Recorder]:
    """Within the block, every Recordable module of model hands its stages to the recorder."""
    scoped = [m for _, m in model.named_modules() if isinstance(m, Recordable)]
    try:
        for prefix, module in model.named_modules():
            if isinstance(module, Recordable):
                module.record = recorder.scoped(prefix, module)
        yield recorder
    finally:
        for module in scoped:
            module.record = None
