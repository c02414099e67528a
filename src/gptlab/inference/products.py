"""Matrix products whose rows do not depend on the batch, for the scheduler's decode steps.

Why (measured with torch 2.13 on this CPU, MKL 2024.2, AVX-512, one thread): F.linear(x[:M], W) gives
row 0 one float32 result for M=1, another for M=2..15 and another from 16 up (2..5 and 6 up for
128-wide layers), because the matrix library picks its kernel, and with it the summation order, by
the row count: a sequence decoded alone and the same sequence among others would get different
logits. Two products keep each row's bits whatever the batch:
- MKL's product with the weight packed once (torch.ops.mkl._mkl_linear, the fast path of torch's own
  inference freezing): the same bits for every M from 1 to 32 at least (from 2 for a 128x65 head,
  and for some 128-wide layers on two threads), and as fast as F.linear's single-row kernel alone.
  With gpt2-small's 48 block matrices read from memory, per decode step: 25.2 ms at M=1 (F.linear
  24.5), 37.4 at M=8 (F.linear 61.9), 44.8 at M=16 (64.5).
- the product with the weight transposed once into a contiguous copy, x @ Wt, the same bits for
  every M from 2 to 1,100 (a few shapes split again on two threads, e.g. K=3072, N=768 from M=512
  up); it repacks the weight at every call: 36.6 ms at M=2 on the matrices above, where the weights
  stay in cache about what F.linear costs. It serves where MKL's packed product does not exist.
While the scheduler decodes, every Linear runs one of them (the packed one where there is one) with
its rows padded to the smallest count from which a probe found it the same row for row (the kernel
choice depends on the shape and the thread count, not on the values, so random inputs decide it),
rows beyond the probed range in chunks. Prefill needs none of this: a prompt chunk is one
sequence's own rows.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from gptlab.model.layers import Linear

PROBE_ROWS = 16  # products are probed (and decode rows chunked) up to this many rows

Product = Callable[[torch.Tensor], torch.Tensor]  # rows (M, K) -> (M, N)

_probed: dict[tuple, int] = {}  # (kind, shape, bias, dtype, device, threads) -> rows from which products agree


def invariant_rows(product: Product, weight: torch.Tensor, key: tuple, rows: int = PROBE_ROWS) -> int:
    """The smallest row count m such that, for every M in [m, rows], each of M rows gets from
    `product` the bits it gets among `rows` rows, at the current thread count (rows: none below). key
    names the product's kind and shape: the answer is kept for every product of that key."""
    key = (*key, torch.get_num_threads(), rows)
    if key not in _probed:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, weight.size(1), generator=g).to(weight)
        full = product(x)
        found = 1
        for m in range(rows - 1, 0, -1):
            pick = torch.randperm(rows, generator=g)[:m]  # rows anywhere in the batch, in any order
            if not torch.equal(product(x[pick]), full[pick]):
                found = m + 1
                break
        _probed[key] = found
    return _probed[key]


def mkl_packed(weight: torch.Tensor, bias: torch.Tensor | None) -> Product | None:
    """MKL's product with the weight packed once, where this torch and device have it."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return None
    mkl = torch.ops.mkl
    if not (hasattr(mkl, "_mkl_linear") and hasattr(mkl, "_mkl_reorder_linear_weight")):
        return None
    packed = mkl._mkl_reorder_linear_weight(weight, PROBE_ROWS)
    # The last argument is the row count the packed path serves (others fall back to F.linear): every one.
    return lambda rows: mkl._mkl_linear(rows, packed, weight, bias, rows.size(0))


def transposed(weight: torch.Tensor, bias: torch.Tensor | None) -> Product:
    """x @ Wt (+ b) with the weight transposed once into a contiguous copy."""
    wt = weight.t().contiguous()
    if bias is None:
        return lambda rows: torch.mm(rows, wt)
    return lambda rows: torch.addmm(bias, rows, wt)


class RowProduct:
    """x @ W.T + b for one Linear, every row's bits independent of the other rows."""

    def __init__(self, linear: Linear, packed: bool = True):
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        product, kind = (mkl_packed(weight, bias) if packed else None), "mkl-packed"
        if product is None:
            product, kind = transposed(weight, bias), "transposed"
        self.product, self.kind = product, kind
        key = (kind, tuple(weight.shape), bias is not None, weight.dtype, str(weight.device))
        self.rows_from = invariant_rows(product, weight, key)
        self._padded = weight.new_zeros(self.rows_from, weight.size(1))  # room to pad a few rows into

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        M = flat.size(0)
        if M < self.rows_from:  # the rows past M hold earlier rows: finite, and nobody reads their results
            self._padded[:M] = flat
            y = self.product(self._padded)[:M]
        elif M <= PROBE_ROWS:
            y = self.product(flat)
        else:
            y = torch.cat([self(flat[start : start + PROBE_ROWS]) for start in range(0, M, PROBE_ROWS)])
        return y.view(*x.shape[:-1], y.size(-1))


class RowInvariantProducts:
    """The row-invariant products of a model's Linear layers, used inside `with products:` only."""

    def __init__(self, linears: list[Linear]):
        self.products = [(m, RowProduct(m)) for m in linears]

    # Plain attribute writes (object.__setattr__): nn.Module's own bookkeeping for each of them costs
    # more than a tiny model's decode step can hide, twice per step.
    def __enter__(self) -> RowInvariantProducts:
        for linear, product in self.products:
            object.__setattr__(linear, "product", product)
        return self

    def __exit__(self, *exc: object) -> None:
        for linear, _ in self.products:
            object.__setattr__(linear, "product", None)


# Each model's products with the state of the weights they were copied from; they go with the model.
_made: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, RowInvariantProducts]] = weakref.WeakKeyDictionary()


def row_invariant_products(model: torch.nn.Module) -> RowInvariantProducts | None:
    """The model's row-invariant products: the copies are made anew when its weights have changed
    since the last ones (an optimizer step between two rollouts: every in-place change bumps a
    tensor's version), kept with the model otherwise, so repeated generations do not copy them again.
    None for weights that are not plain tensors (sharded by FSDP, whole only inside a forward pass):
    such a model decodes with its own products, without the batch guarantee."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    tensors = [t for m in linears for t in (m.weight, m.bias) if t is not None]
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return None
    state = (torch.get_num_threads(), *((t.data_ptr(), t._version) for t in tensors))
    made = _made.get(model)
    if made is None or made[0] != state:
        _made.pop(model, None)  # stale copies go before new ones are made
        made = (state, RowInvariantProducts(linears))
        _made[model] = made
    return made[1]
