"""The sweep's picture: loss against size per budget (the isoFLOP curves) and loss against compute."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.scaling.fit import ScalingLaw, compute_optimal


def plot_sweep(
    points: list[dict[str, Any]],
    law: ScalingLaw,
    flops: Callable[[np.ndarray], np.ndarray],
    holdout: dict[str, Any],
    predicted: float,
    path: Path,
) -> None:
    """Left: val loss against N per budget, measured points and the fitted law's curve, the
    compute-optimal size starred, the held-out run predicted (open) and measured (filled).
    Right: val loss against training FLOPs with the law's compute-optimal frontier. Written
    atomically (a temporary file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = sorted({p["non_embedding_params"] for p in points} | {holdout["non_embedding_params"]})
    n_range = (sizes[0] / 2, sizes[-1] * 2)
    grid = np.exp(np.linspace(np.log(n_range[0]), np.log(n_range[1]), 200))
    budgets = sorted({p["budget_flops"] for p in points})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(budgets) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for color, budget in zip(colors, [*budgets, holdout["budget_flops"]]):
        held = budget == holdout["budget_flops"] and budget not in budgets
        left.plot(
            grid,
            law.loss(grid, budget / flops(grid)),
            color=color,
            linestyle="--" if held else "-",
            linewidth=1,
            label=f"C = {budget:.2g} FLOPs" + (" (held out)" if held else ""),
        )
        at = [p for p in points if p["budget_flops"] == budget]
        left.plot([p["non_embedding_params"] for p in at], [p["val_loss"] for p in at], "o", color=color)
        n_opt, l_opt = compute_optimal(law, budget, flops, n_range)
        left.plot([n_opt], [l_opt], "*", color=color, markersize=13, markeredgecolor="black")
    hold_color = colors[-1] if holdout["budget_flops"] not in budgets else "red"
    left.plot(
        [holdout["non_embedding_params"]],
        [predicted],
        "D",
        markerfacecolor="none",
        color=hold_color,
        markersize=10,
        label="held-out run: predicted",
    )
    left.plot(
        [holdout["non_embedding_params"]],
        [holdout["val_loss"]],
        "D",
        color=hold_color,
        markersize=7,
        label="held-out run: measured",
    )
    left.set(
        xscale="log",
        xlabel="non-embedding parameters N",
        ylabel="val loss (nats/token)",
        title="isoFLOP curves: L(N, D = C / FLOPs per token)",
    )
    left.legend(fontsize=8)

    all_c = [p["flops"] for p in points] + [holdout["flops"]]
    c_grid = np.exp(np.linspace(np.log(min(all_c) / 1.5), np.log(max(all_c) * 1.5), 60))
    frontier = [compute_optimal(law, c, flops, n_range)[1] for c in c_grid]
    right.plot(c_grid, frontier, color="black", linewidth=1, label="fitted compute-optimal frontier")
    scatter = right.scatter(
        [p["flops"] for p in points],
        [p["val_loss"] for p in points],
        c=np.log10([p["non_embedding_params"] for p in points]),
        cmap="plasma",
        s=25,
    )
    fig.colorbar(scatter, ax=right, label="log10 N")
    right.plot(
        [holdout["flops"]],
        [predicted],
        "D",
        markerfacecolor="none",
        color="red",
        markersize=10,
        label=f"held out: predicted {predicted:.3f}",
    )
    right.plot(
        [holdout["flops"]],
        [holdout["val_loss"]],
        "D",
        color="red",
        markersize=7,
        label=f"held out: measured {holdout['val_loss']:.3f}",
    )
    right.set(
        xscale="log",
        xlabel="training FLOPs C",
        ylabel="val loss (nats/token)",
        title=f"L(N, D) = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.2f} + {law.B:.3g}/D^{law.beta:.2f}",
    )
    right.legend(fontsize=8)
    # After set_xscale (which installs its own): labelled minor ticks (2x10^11 ...) would overlap.
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
