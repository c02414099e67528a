"""The scaling law fitted to measured points: L(N, D) = E + A / N^alpha + B / D^beta.

N is the non-embedding parameter count, D the tokens trained on, L the val loss. The form is the
Chinchilla one ("approach 3"): an irreducible loss E, a term a bigger model removes, a term more data
removes. It suits a compute sweep because every run at a fixed budget trades N against D, so a loss
against N alone is U-shaped (too small a model, or too few tokens) and no single power law in N fits it.

For fixed exponents the law is linear in (E, A, B), so the fit scans the exponents on a grid, solves
a non-negative least-squares problem for (E, A, B) at each, and refines the grid around the best: a
few thousand tiny linear solves with numpy, no optimiser to start or to trap in a local minimum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gptlab.errors import GptlabError

PARAMS = 5  # E, A, alpha, B, beta


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, with the root-mean-square residual of its fit."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rmse: float = 0.0

    def loss(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        """Predicted val loss of a model of n non-embedding parameters trained on d tokens."""
        return self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)

    @property
    def optimal_size_exponent(self) -> float:
        """a in N_opt ∝ C^a when C ∝ N·D (the split of extra compute between size and data)."""
        return self.beta / (self.alpha + self.beta)


def _nonnegative_lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin ||X c - y|| over c >= 0, for a handful of columns: the best unconstrained solution over
    every subset of active columns (exact for 3 columns, and cheaper than an iterative solver)."""
    c, *_ = np.linalg.lstsq(X, y, rcond=None)
    if np.all(c >= 0):  # the unconstrained optimum is feasible, so it is the constrained one (convexity)
        return c, float(np.sum((X @ c - y) ** 2))
    best, best_sse = np.zeros(X.shape[1]), float(np.sum(y**2))
    for k in range(1, X.shape[1]):
        for cols in itertools.combinations(range(X.shape[1]), k):
            c, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if np.any(c < 0):
                continue
            sse = float(np.sum((X[:, cols] @ c - y) ** 2))
            if sse < best_sse:
                best_sse, best = sse, np.zeros(X.shape[1])
                best[list(cols)] = c
    return best, best_sse


def fit_scaling_law(
    n: Sequence[float], d: Sequence[float], loss: Sequence[float], exponent_range: tuple[float, float] = (0.02, 2.0)
) -> ScalingLaw:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to measured (N, D, L) points (least squares, E, A, B >= 0).

    Needs at least 5 points with at least 2 distinct N and 2 distinct D (5 parameters)."""
    N, D, L = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    if not (len(N) == len(D) == len(L)):
        raise GptlabError("the fit needs as many sizes and token counts as losses")
    if len(L) < PARAMS or len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise GptlabError(
            f"the fit needs at least {PARAMS} points spread over 2 sizes and 2 token counts (got {len(L)} points)"
        )
    if not (np.all(np.isfinite(L)) and np.all(N > 0) and np.all(D > 0)):
        raise GptlabError("the fit needs finite losses and positive sizes and token counts")
    # Powers of N and D relative to their geometric means, so the columns stay well scaled at any size.
    n0, d0 = math.exp(float(np.mean(np.log(N)))), math.exp(float(np.mean(np.log(D))))
    ones = np.ones_like(L)

    def solve(alpha: float, beta: float) -> tuple[float, np.ndarray]:
        X = np.stack([ones, (N / n0) ** -alpha, (D / d0) ** -beta], axis=1)
        c, sse = _nonnegative_lstsq(X, L)
        return sse, c

    lo, hi = exponent_range
    alphas = betas = np.linspace(lo, hi, 60)
    best = (math.inf, 0.0, 0.0, np.zeros(3))
    for _ in range(4):  # a coarse grid, then three finer ones around the best pair
        for a in alphas:
            for b in betas:
                sse, c = solve(float(a), float(b))
                if sse < best[0]:
                    best = (sse, float(a), float(b), c)
        step = (alphas[1] - alphas[0], betas[1] - betas[0])
        alphas = np.linspace(max(lo, best[1] - step[0]), min(hi, best[1] + step[0]), 21)
        betas = np.linspace(max(lo, best[2] - step[1]), min(hi, best[2] + step[1]), 21)
    sse, alpha, beta, (E, a_scaled, b_scaled) = best
    return ScalingLaw(
        E=float(E),
        A=float(a_scaled * n0**alpha),
        alpha=alpha,
        B=float(b_scaled * d0**beta),
        beta=beta,
        rmse=math.sqrt(sse / len(L)),
    )


def compute_optimal(
    law: ScalingLaw, budget: float, flops_per_token: Callable[[np.ndarray], np.ndarray], n_range: tuple[float, float]
) -> tuple[float, float]:
    """(N, predicted loss) of the compute-optimal model at `budget` FLOPs, searched on a fine log grid
    of sizes within n_range; tokens D = budget / flops_per_token(N) (the model family's own FLOPs)."""
    grid = np.exp(np.linspace(math.log(n_range[0]), math.log(n_range[1]), 2000))
    losses = np.asarray(law.loss(grid, budget / flops_per_token(grid)))
    i = int(np.argmin(losses))
    return float(grid[i]), float(losses[i])
