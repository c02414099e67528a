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

    def _plan(self, starts: list[int], T: int) -> torch.Tensor:
        """Positions (B, T) of the next T tokens of rows that have been fed `starts` tokens; refuses a
        feed that does not fit and makes sure the storage is wide enough for it."""
        top = max(starts)
        if T > 1 and top + T > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {top} used, {T} more given")
        if not self.can_slide and top >= self.capacity:
            raise ValueError(f"KV cache is full ({self.capacity} positions) and this model cannot slide it")
        self._needed = min(self.capacity, top + T)
        return torch.tensor(starts, device=self.device)[:, None] + torch.arange(T, device=self.device)[None, :]

    def _storage(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's keys and values, wide enough for the current feed."""
        if layer == len(self.k):
            self.k.append(self._grown(None, like))
            self.v.append(self._grown(None, like))
        elif self.k[layer].size(2) < self._needed:
            self.k[layer] = self._grown(self.k[layer], like)
            self.v[layer] = self._grown(self.v[layer], like)
        return self.k[layer], self.v[layer]

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
        # This feed's columns (B, T), mask ("prefill": plain causal over the fresh keys; None: every
        # stored column) and the columns any query may read.
        self._columns = torch.zeros(0, dtype=torch.long)
        self._mask: str | torch.Tensor | None = None
        self._width = 0
        # Smear's look-back across feeds: each row's last real id, and this feed's ids until advance().
        self.last = torch.full((batch_size,), -1, dtype=torch.long, device=self.device)
        self._fed: torch.Tensor | None = None

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row; prepares this feed's columns and mask."""
        positions = self._plan(self.seen.tolist(), T)
        width = self._needed  # columns any query may read
        key = torch.arange(width, device=self.device)
        mask: str | torch.Tensor | None
        if bool((self.seen == 0).all()):
            mask = "prefill"  # every row from position 0: plain causal attention over the fresh keys
        elif T == 1:
            # One new token per row sees every valid column of its row (itself included).
            allowed = key[None, :] < torch.clamp(self.seen + 1, max=self.capacity)[:, None]  # (B, width)
            mask = None if bool(allowed.all()) else allowed[:, None, None, :]
        else:
            # Several tokens after earlier ones (no wrap: _plan checked): causal over positions.
            mask = (key[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, width)
        self._columns, self._mask, self._width = positions % self.capacity, mask, width
        return positions

    def previous_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Each fed id's predecessor (B, T): the row's last id fed before for the first (-1 for a row
        still empty), the one before it in the feed for the others."""
        self._fed = ids
        first = torch.where(self.seen > 0, self.last, -1).to(ids.device)
        return torch.cat((first[:, None], ids[:, :-1]), dim=1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store one layer's new keys and values (B, H, T, D); attention of the new queries over every
        key their row may read."""
        columns, mask, width = self._columns, self._mask, self._width
        keys, values = self._storage(layer, k)
        keys[self._rows[:, None], :, columns] = k.transpose(1, 2)  # (B, T) columns per row
        values[self._rows[:, None], :, columns] = v.transpose(1, 2)
        if isinstance(mask, str):
            # From column 0, attend to the fresh keys: exactly the numbers of the cache-free forward. Pads
            # sit after each row's real tokens, so causal attention never lets a real token see them.
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1)
        return F.scaled_dot_product_attention(q, keys[:, :, :width], values[:, :, :width], attn_mask=mask)

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each row has gained lengths[b] real tokens (its pads do not count)."""
        lengths = lengths.to(self.seen.device)
        if self._fed is not None:  # a model with smear asked for this feed's predecessors: keep each row's last id
            newest = self._fed.to(self.device)[self._rows, (lengths - 1).clamp(min=0)]
            self.last = torch.where(lengths > 0, newest, self.last)
            self._fed = None
        self.seen += lengths


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
        self._rows: list[int] = []
        self._groups: list[list[int]] = []  # this feed's runs of rows (positions())
        self._where: tuple[torch.Tensor, torch.Tensor] | None = None
        # Smear's look-back across feeds: each slot's last id, and this feed's ids until advance().
        self.last = [-1] * slots
        self._fed: list[list[int]] | None = None

    def reset(self, slot: int) -> None:
        """Forget a slot's tokens (a new sequence takes it, or its window is recomputed)."""
        self.seen[slot] = 0

    def room(self, slot: int) -> int:
        """How many more tokens a slot takes before it is full (ignoring that RoPE may slide)."""
        return self.capacity - self.seen[slot]

    def select(self, rows: Sequence[int]) -> None:
        """The slot behind each row of the next forward pass."""
        self._rows = list(rows)

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row; prepares this feed's groups."""
        starts = [self.seen[s] for s in self._rows]
        positions = self._plan(starts, T)
        # Runs of rows whose slots follow each other at the same length: [first row, rows, first slot, length].
        groups: list[list[int]] = []
        for b, (slot, start) in enumerate(zip(self._rows, starts)):
            g = groups[-1] if groups else None
            if g is not None and slot == g[2] + g[1] and start == g[3]:
                g[1] += 1
            else:
                groups.append([b, 1, slot, start])
        self._groups = groups
        # Where each row's keys go: one slice for a single run, one indexed write for several.
        self._where = (
            None
            if len(groups) == 1
            else (torch.tensor(self._rows, device=self.device)[:, None], positions % self.capacity)
        )
        return positions

    def previous_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Each fed id's predecessor (B, T): the slot's last id fed before for the first (-1 for a slot
        just reset), the one before it in the feed for the others."""
        self._fed = ids.tolist()
        first = [self.last[s] if self.seen[s] else -1 for s in self._rows]
        return torch.cat((torch.tensor(first, device=ids.device)[:, None], ids[:, :-1]), dim=1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the rows' new keys and values (B, H, T, D); return each row's attention output."""
        keys, values = self._storage(layer, k)
        T, outs = q.size(2), []
        if self._where is not None:
            slot_of, columns = self._where
            keys[slot_of, :, columns] = k.transpose(1, 2)
            values[slot_of, :, columns] = v.transpose(1, 2)
        else:
            _, n, slot, start = self._groups[0]
            column = start % self.capacity  # T > 1 never wraps (_plan checked): the columns are consecutive
            keys[slot : slot + n, :, column : column + T] = k
            values[slot : slot + n, :, column : column + T] = v
        for b, n, slot, start in self._groups:
            rows, slots = slice(b, b + n), slice(slot, slot + n)
            if start == 0:
                # From the first position: causal attention over the fresh keys only.
                outs.append(F.scaled_dot_product_attention(q[rows], k[rows], v[rows], is_causal=T > 1))
                continue
            # Every valid column of the slot (in a ring, order does not matter); a later chunk of a
            # prompt is causal over positions.
            width = min(start + T, self.capacity)
            mask = None
            if T > 1:
                mask = (
                    torch.arange(width, device=q.device)[None, :]
                    <= torch.arange(start, width, device=q.device)[:, None]
                )
            out = F.scaled_dot_product_attention(
                q[rows], keys[slots, :, :width], values[slots, :, :width], attn_mask=mask
            )
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each row has gained lengths[b] tokens."""
        for b, (slot, n) in enumerate(zip(self._rows, lengths.tolist())):
            self.seen[slot] += int(n)
            if self._fed is not None and n > 0:  # a model with smear: keep the slot's last id
                self.last[slot] = self._fed[b][int(n) - 1]
        self._fed = None
