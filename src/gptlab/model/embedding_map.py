"""The token embedding matrix as a map: a 2-D PCA projection and nearest neighbours by cosine."""

from __future__ import annotations

import torch


@torch.no_grad()
def pca_2d(weight: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project the rows of weight (V, D) on its two main directions: points (V, 2) and the share
    of variance each direction explains."""
    x = weight.detach().float().cpu()
    x = x - x.mean(dim=0)
    # Eigenvectors of the D x D covariance: cheap even for a large vocabulary, and deterministic.
    eigvals, eigvecs = torch.linalg.eigh(x.T @ x)
    top = eigvecs[:, [-1, -2]]  # eigh sorts ascending: the last two are the largest
    # An eigenvector's sign is arbitrary; fix it so the same weights always give the same picture.
    top = top * torch.sign(top[top.abs().argmax(dim=0), torch.arange(2)])
    total = eigvals.clamp(min=0).sum().item() or 1.0
    return x @ top, [eigvals[-1].item() / total, eigvals[-2].item() / total]


@torch.no_grad()
def nearest_neighbours(weight: torch.Tensor, token_id: int, k: int) -> list[tuple[int, float]]:
    """The k rows most similar to row token_id by cosine similarity (itself excluded), best first."""
    x = torch.nn.functional.normalize(weight.detach().float().cpu(), dim=-1)
    sims = x @ x[token_id]
    sims[token_id] = float("-inf")
    values, indices = torch.topk(sims, min(k, x.size(0) - 1))
    return [(int(i), float(v)) for v, i in zip(values, indices)]
