"""The scheduler's KV cache: a fixed number of slots, one per running sequence, each with its own
length, that sequences take and give back while the others keep going.

Rows of one forward pass are slots (or None: a pad row). Attention is computed row by row over
exactly that row's own keys (the model calls `attend` instead of running one batched attention):
a batched attention over rows of different lengths pads the shorter ones, and the padded width
changes the float32 result, so a sequence's tokens would depend on its neighbours.
Storage per slot is a ring of `capacity` columns: token number n lives in column n % capacity;
a model whose keys do not depend on where the window starts (RoPE) lets a full slot wrap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class SlotCache:
    """Keys and values of every layer for `slots` sequences, fed a few rows at a time."""

    def __init__(self, model: torch.nn.Module, slots: int, capacity: int | None = None):
        layers = model.attention_layers()
        self.n_layer, self.n_head, self.head_dim = len(layers), layers[0].n_head, layers[0].head_dim
        self.capacity = capacity or model.config.block_size
        self.can_slide = model.cache_can_slide
        self.device = next(model.parameters()).device
        self.slots = slots
        self.seen = [0] * slots  # tokens fed to each slot since it was last reset
        self.k: torch.Tensor | None = None  # (layer, slot, head, column, head_dim), allocated on first use
        self.v: torch.Tensor | None = None
        self._rows: list[int | None] = []

    def reset(self, slot: int) -> None:
        """Forget a slot's tokens (a new sequence takes it, or its window is recomputed)."""
        self.seen[slot] = 0

    def room(self, slot: int) -> int:
        """How many more tokens a slot takes before it is full (ignoring that RoPE may slide)."""
        return self.capacity - self.seen[slot]

    def select(self, rows: Sequence[int | None]) -> None:
        """The slot behind each row of the next forward pass (None: a pad row, ignored)."""
        self._rows = list(rows)

    # --- what the model calls (model/gpt.py ModelCache, model/layers.py) ---

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row."""
        start = torch.tensor([self.seen[s] if s is not None else 0 for s in self._rows], device=self.device)
        for s in self._rows:
            if s is not None and T > 1 and self.seen[s] + T > self.capacity:
                raise ValueError(f"slot {s} holds {self.capacity} positions; {self.seen[s]} used, {T} more given")
        return start[:, None] + torch.arange(T, device=self.device)[None, :]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the rows' new keys and values (B, H, T, D); return each row's attention output,
        computed for that row alone."""
        if self.k is None:
            shape = (self.n_layer, self.slots, self.n_head, self.capacity, self.head_dim)
            # Zeros, not uninitialised memory: NaN garbage must never reach a softmax.
            self.k = torch.zeros(shape, device=k.device, dtype=k.dtype)
            self.v = torch.zeros(shape, device=k.device, dtype=k.dtype)
        T = q.size(2)
        real = [b for b, slot in enumerate(self._rows) if slot is not None]
        # Store every real row's new keys and values at once: (rows, T) column indices per slot.
        slots = torch.tensor([self._rows[b] for b in real], device=k.device)
        starts = torch.tensor([self.seen[self._rows[b]] for b in real], device=k.device)
        columns = (starts[:, None] + torch.arange(T, device=k.device)[None, :]) % self.capacity
        self.k[layer][slots[:, None], :, columns] = k[real].transpose(1, 2)
        self.v[layer][slots[:, None], :, columns] = v[real].transpose(1, 2)
        y = torch.zeros_like(q)
        for b in real:
            slot = self._rows[b]
            start = self.seen[slot]
            if start == 0:
                # From the first position: causal attention over the fresh keys only.
                y[b] = F.scaled_dot_product_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], is_causal=T > 1)[0]
            elif T == 1:
                # One new token sees every valid column of its slot (in a ring, order does not matter).
                width = min(start + 1, self.capacity)
                y[b] = F.scaled_dot_product_attention(
                    q[b : b + 1], self.k[layer, slot : slot + 1, :, :width], self.v[layer, slot : slot + 1, :, :width]
                )[0]
            else:
                # A later chunk of a prompt: causal over positions (no wrap: positions() checked).
                width = start + T
                mask = (
                    torch.arange(width, device=k.device)[None, :]
                    <= torch.arange(start, width, device=k.device)[:, None]
                )
                y[b] = F.scaled_dot_product_attention(
                    q[b : b + 1],
                    self.k[layer, slot : slot + 1, :, :width],
                    self.v[layer, slot : slot + 1, :, :width],
                    attn_mask=mask,
                )[0]
        return y

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each real row has gained lengths[b] tokens."""
        for slot, n in zip(self._rows, lengths.tolist()):
            if slot is not None:
                self.seen[slot] += int(n)
