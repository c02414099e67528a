"""The KV cache: each layer's keys and values of the tokens seen so far, per row, so a new token
computes only its own and attends to the stored ones.

Rows have their own lengths: row b has been fed seen[b] tokens, and its next token takes position
seen[b]. A prefill feeds rows right-padded to a common width with their true lengths; the pads'
columns are masked out and overwritten later. Storage is a ring of `capacity` columns per row:
token number n lives in column n % capacity. While no row has wrapped, column j holds position j.
A model whose keys do not depend on where the window starts (RoPE) lets a full row wrap: the
oldest entry is overwritten, the others keep their keys (model.cache_can_slide); attention does not
care in which column a key sits, only which keys are valid.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for a batch of rows, each with its own length."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str,
        can_slide: bool = False,
    ):
        if capacity <= 0:
            raise ValueError(f"cache capacity {capacity} must be > 0")
        self.shape = (n_layer, batch_size, n_head, capacity, head_dim)
        self.device = torch.device(device)
        self.capacity, self.can_slide = capacity, can_slide
        self.k: torch.Tensor | None = None  # allocated on first use, in the dtype the layers compute in
        self.v: torch.Tensor | None = None
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._step: tuple | None = None  # (columns, mask, width) of the tokens being fed now

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, capacity: int | None = None) -> KVCache:
        """A cache shaped for model's attention layers (capacity: block_size unless given)."""
        attn = model.attention_layers()[0]
        capacity = capacity or model.config.block_size
        if not model.cache_can_slide and capacity > model.config.block_size:
            raise ValueError(
                f"cache capacity {capacity} exceeds block_size={model.config.block_size}, "
                "past which learned positions do not exist"
            )
        device = next(model.parameters()).device
        return cls(
            len(model.attention_layers()),
            batch_size,
            attn.n_head,
            attn.head_dim,
            capacity,
            device,
            model.cache_can_slide,
        )

    @property
    def full(self) -> bool:
        """Whether some row has filled every column (the next token must slide or recompute)."""
        return bool((self.seen >= self.capacity).any())

    def positions(self, T: int) -> torch.Tensor:
        """Position ids (B, T) of the next T tokens of each row; prepares this feed's columns and mask."""
        new = torch.arange(T, device=self.device)
        positions = self.seen[:, None] + new[None, :]
        if T > 1 and bool((positions[:, -1] >= self.capacity).any()):
            raise ValueError(f"KV cache holds {self.capacity} positions; {int(self.seen.max())} used, {T} more given")
        if bool((self.seen >= self.capacity).any()) and not self.can_slide:
            raise ValueError(f"KV cache is full ({self.capacity} positions) and this model cannot slide it")
        columns = positions % self.capacity
        width = min(self.capacity, int(self.seen.max()) + T)  # columns any query may read
        key = torch.arange(width, device=self.device)
        if T == 1:
            # One new token per row sees every valid column of its row (itself included).
            valid = torch.minimum(self.seen + 1, torch.tensor(self.capacity, device=self.device))
            allowed = key[None, :] < valid[:, None]  # (B, width)
            mask = None if bool(allowed.all()) else allowed[:, None, None, :]
        elif bool((self.seen == 0).all()):
            mask = "prefill"  # resolved in update(): plain causal attention unless rows are padded
        else:
            # Several tokens after earlier ones (no wrap, checked above): causal over positions.
            allowed = key[None, None, :] <= positions[:, :, None]  # (B, T, width)
            mask = allowed[:, None]
        self._step = (columns, mask, width)
        return positions

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store one layer's new keys/values (B, H, T, D); return every key and value the new queries
        may read, with the attention mask (None: plain causal for a prefill, or all columns)."""
        columns, mask, width = self._step
        if self.k is None:
            # Zeros, not uninitialised memory: a masked-out column gets weight 0, and 0 x NaN (what
            # uninitialised memory may hold) would still be NaN.
            self.k = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
            self.v = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
        rows = torch.arange(k.size(0), device=k.device)[:, None]
        # (B, T) column indices per row; the stored layout is (B, H, capacity, D).
        self.k[layer][rows, :, columns] = k.transpose(1, 2)
        self.v[layer][rows, :, columns] = v.transpose(1, 2)
        if isinstance(mask, str):
            # A prefill from column 0 needs no stored columns: attend to the fresh keys, so the numbers
            # are exactly those of the cache-free forward. Pads sit after each row's real tokens, so
            # causal attention never lets a real token see them.
            return k, v, None
        return self.k[layer, :, :, :width], self.v[layer, :, :, :width], mask

    def advance(self, lengths: torch.Tensor) -> None:
        """After all layers: each row has gained lengths[b] real tokens (its pads do not count)."""
        self.seen += lengths.to(self.seen.device)
        self._step = None

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the batch), e.g. when the others have finished."""
        if self.k is not None:
            self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.seen = self.seen[rows]
        self.shape = (self.shape[0], len(rows), *self.shape[2:])
