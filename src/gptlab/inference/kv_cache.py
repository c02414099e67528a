"""KV caches: each cached attention layer's keys and values of the tokens seen so far, so a new token
computes only its own and attends to the stored ones. Both implement the model's AttentionCache
(model/layers.py), both laid out by the model (model.cache_layout()):

    KVCache:   a batch of rows fed together, one batched attention per layer (rows of different
               lengths masked): the encoder–decoder's generation.
    SlotCache: a fixed number of slots that sequences take and give back while the others go on
               (inference/scheduler.py); each row attends over exactly its own keys, so a
               sequence's numbers never depend on its neighbours.

The ring both share: a row that has been fed n tokens stores its next one in column n % capacity, so
while it has not wrapped, column j holds position j. A model whose keys do not depend on where the
window starts (RoPE, layout.can_slide) lets a full row wrap: the oldest entry is overwritten, and
attention does not care in which column a key sits, only which keys are valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gptlab.model.layers import CacheLayout

MIN_COLUMNS = 64  # the first allocation's width, where the context allows


class _Ring:
    """Storage and position arithmetic shared by both caches: per layer, keys and values laid out
    (row, head, column, head_dim), `rows` rows of up to layout.capacity columns each."""

    def __init__(self, layout: CacheLayout, rows: int):
        self.layout, self.rows = layout, rows
        self.capacity, self.can_slide, self.device = layout.capacity, layout.can_slide, layout.device
        self.k: list[torch.Tensor] = []  # per layer, allocated on first use in the dtype the layers compute in
        self.v: list[torch.Tensor] = []
        self._needed = 0  # columns the current feed writes or reads

    def _plan(self, starts: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, T) of the next T tokens of rows that have been fed `starts` tokens, and the
        columns they go to; refuses a feed that does not fit."""
        positions = starts[:, None] + torch.arange(T, device=starts.device)[None, :]
        if T > 1 and bool((positions[:, -1] >= self.capacity).any()):
            raise ValueError(f"KV cache holds {self.capacity} positions; {int(starts.max())} used, {T} more given")
        if not self.can_slide and bool((starts >= self.capacity).any()):
            raise ValueError(f"KV cache is full ({self.capacity} positions) and this model cannot slide it")
        self._needed = min(self.capacity, int(starts.max()) + T)
        return positions, positions % self.capacity

    def _store(self, layer: int, rows: torch.Tensor, columns: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write new keys and values (B, H, T, D) of each row (index into storage rows) at its columns (B, T)."""
        if layer == len(self.k):
            self.k.append(self._grown(None, k))
            self.v.append(self._grown(None, v))
        elif self.k[layer].size(2) < self._needed:
            self.k[layer] = self._grown(self.k[layer], k)
            self.v[layer] = self._grown(self.v[layer], v)
        self.k[layer][rows[:, None], :, columns] = k.transpose(1, 2)
        self.v[layer][rows[:, None], :, columns] = v.transpose(1, 2)

    def _grown(self, old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Storage wide enough for this feed: doubled (up to capacity) rather than the whole context up
        front, whose zero-filling cost a short generation dearly. Zeros, not uninitialised memory: a
        masked-out column gets weight 0, and 0 x NaN (what uninitialised memory may hold) is still NaN."""
        width = old.size(2) if old is not None else min(MIN_COLUMNS, self.capacity)
        while width < self._needed:
            width = min(2 * width, self.capacity)
        shape = (self.rows, self.layout.n_head, width, self.layout.head_dim)
        new = torch.zeros(shape, device=like.device, dtype=like.dtype)
        if old is not None:
            new[:, :, : old.size(2)] = old
        return new


class KVCache(_Ring):
    """Keys and values of every layer for a batch of rows fed together, each with its own length.

    A prefill may feed rows right-padded to a common width, with their true lengths given to advance():
    the pads' columns are masked out and overwritten later.
    """

    def __init__(self, layout: CacheLayout, batch_size: int):
        super().__init__(layout, batch_size)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._rows = torch.arange(batch_size, device=self.device)
        self._step: tuple | None = None  # (columns, mask, width) of the tokens being fed now

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row; prepares this feed's columns and mask."""
        positions, columns = self._plan(self.seen, T)
        width = self._needed  # columns any query may read
        key = torch.arange(width, device=self.device)
        if bool((self.seen == 0).all()):
            mask = "prefill"  # every row from position 0: plain causal attention over the fresh keys
        elif T == 1:
            # One new token per row sees every valid column of its row (itself included).
            allowed = key[None, :] < torch.clamp(self.seen + 1, max=self.capacity)[:, None]  # (B, width)
            mask = None if bool(allowed.all()) else allowed[:, None, None, :]
        else:
            # Several tokens after earlier ones (no wrap: _plan checked): causal over positions.
            mask = (key[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, width)
        self._step = (columns, mask, width)
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store one layer's new keys and values (B, H, T, D); attention of the new queries over every
        key their row may read."""
        columns, mask, width = self._step
        self._store(layer, self._rows, columns, k, v)
        if isinstance(mask, str):
            # From column 0, attend to the fresh keys: exactly the numbers of the cache-free forward. Pads
            # sit after each row's real tokens, so causal attention never lets a real token see them.
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1)
        return F.scaled_dot_product_attention(
            q, self.k[layer][:, :, :width], self.v[layer][:, :, :width], attn_mask=mask
        )

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each row has gained lengths[b] real tokens (its pads do not count)."""
        self.seen += lengths.to(self.seen.device)
        self._step = None


class SlotCache(_Ring):
    """Keys and values of every layer for `slots` sequences, fed a few rows at a time.

    Rows of one forward pass are slots (select()). Each row attends over exactly its own keys: a
    batched attention over rows of different lengths pads the shorter ones, and the padded width
    changes the float32 result, so a sequence's tokens would depend on its neighbours. Rows of
    neighbouring slots at the same length share one attention call (the kernel computes each row and
    head on its own, whatever the batch: tests/test_scheduler.py checks it to the last bit).
    """

    def __init__(self, layout: CacheLayout, slots: int):
        super().__init__(layout, slots)
        self.seen = [0] * slots  # tokens fed to each slot since it was last reset
        self._rows: list[int | None] = []
        self._step: tuple | None = None  # (real rows, their slots, their columns, groups) of this feed

    def reset(self, slot: int) -> None:
        """Forget a slot's tokens (a new sequence takes it, or its window is recomputed)."""
        self.seen[slot] = 0

    def room(self, slot: int) -> int:
        """How many more tokens a slot takes before it is full (ignoring that RoPE may slide)."""
        return self.capacity - self.seen[slot]

    def select(self, rows: Sequence[int | None]) -> None:
        """The slot behind each row of the next forward pass (None: a pad row, ignored)."""
        self._rows = list(rows)

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row; prepares this feed's columns."""
        starts = torch.tensor([self.seen[s] if s is not None else 0 for s in self._rows], device=self.device)
        positions, columns = self._plan(starts, T)
        real = [b for b, s in enumerate(self._rows) if s is not None]
        slots = torch.tensor([self._rows[b] for b in real], dtype=torch.long, device=self.device)
        # Runs of rows whose slots follow each other at the same length: (first row, rows, first slot, length).
        groups: list[list[int]] = []
        for b in real:
            slot, start = self._rows[b], self.seen[self._rows[b]]
            g = groups[-1] if groups else None
            if g is not None and b == g[0] + g[1] and slot == g[2] + g[1] and start == g[3]:
                g[1] += 1
            else:
                groups.append([b, 1, slot, start])
        self._step = (real, slots, columns[real], groups)
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the rows' new keys and values (B, H, T, D); return each row's attention output."""
        real, slots, columns, groups = self._step
        self._store(layer, slots, columns, k[real], v[real])
        T = q.size(2)
        y = torch.zeros_like(q) if len(real) < q.size(0) else None
        outs = []
        for b, n, slot, start in groups:
            rows = slice(b, b + n)
            if start == 0:
                # From the first position: causal attention over the fresh keys only.
                out = F.scaled_dot_product_attention(q[rows], k[rows], v[rows], is_causal=T > 1)
            else:
                # Every valid column of the slot (in a ring, order does not matter); a later chunk of a
                # prompt is causal over positions (no wrap: _plan checked).
                width = min(start + T, self.capacity)
                mask = None
                if T > 1:
                    key = torch.arange(width, device=q.device)
                    mask = key[None, :] <= torch.arange(start, width, device=q.device)[:, None]
                keys, values = self.k[layer][slot : slot + n, :, :width], self.v[layer][slot : slot + n, :, :width]
                out = F.scaled_dot_product_attention(q[rows], keys, values, attn_mask=mask)
            if y is not None:
                y[rows] = out
            outs.append(out)
        if y is not None:
            return y
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each real row has gained lengths[b] tokens."""
        for slot, n in zip(self._rows, lengths.tolist()):
            if slot is not None:
                self.seen[slot] += int(n)
        self._step = None
