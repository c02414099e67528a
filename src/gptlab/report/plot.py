"""Loss curves: train and val loss against steps and against tokens seen, lr on a second axis.

Drawn with matplotlib's object API on the Agg canvas (no pyplot): no display needed, no global
figure state, safe to call from the trainer or a server thread.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write
from gptlab.outputs import check_output_file
from gptlab.report.history import RunHistory, read_history

LOSS_PNG = "loss.png"
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def loss_figure(histories: Sequence[RunHistory]) -> Figure:
    """Two panels (loss vs steps with lr on a twin axis, loss vs tokens seen), one colour per run."""
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    by_step, by_tokens = fig.subplots(1, 2)
    lr_axis = by_step.twinx()
    overlay = len(histories) > 1
    for i, hist in enumerate(histories):
        colour = f"C{i}" if overlay else None
        prefix = f"{hist.name} " if overlay else ""
        for key, label, style in (
            ("train_loss", "train", {"lw": 1, "alpha": 0.7}),
            ("val_loss", "val", {"lw": 1.5, "ls": "--", "marker": "o", "ms": 3}),
        ):
            points = hist.series(key)
            if not points:
                continue
            steps, tokens, loss = zip(*points)
            # Single run: train and val get their own colours; overlaid runs share one per run.
            c = colour or ("C0" if key == "train_loss" else "C1")
            by_step.plot(steps, loss, color=c, label=f"{prefix}{label} loss", **style)
            by_tokens.plot(tokens, loss, color=c, label=f"{prefix}{label} loss", **style)
        lr = hist.series("lr")
        if lr:
            steps, _, values = zip(*lr)
            lr_axis.plot(steps, values, color=colour or "0.5", ls=":", lw=1, label=f"{prefix}lr")
    by_step.set(xlabel="step", ylabel="loss (nats per token)", title="loss and learning rate vs steps")
    by_tokens.set(xlabel="tokens seen", ylabel="loss (nats per token)", title="loss vs tokens seen")
    lr_axis.set_ylabel("learning rate")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (by_step, by_tokens):
        ax.grid(alpha=0.3)
    lines, labels = by_step.get_legend_handles_labels()
    lr_lines, lr_labels = lr_axis.get_legend_handles_labels()
    by_step.legend(lines + lr_lines, labels + lr_labels, fontsize=8, loc="upper right")
    if not any(h.series("val_loss") for h in histories):
        by_tokens.text(
            0.5,
            0.5,
            "no evaluation yet:\nval loss appears after the first eval",
            transform=by_tokens.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    fig.suptitle(" vs ".join(h.name for h in histories))
    return fig


def png_bytes(histories: Sequence[RunHistory]) -> bytes:
    """The loss figure as PNG bytes (for inlining in the report)."""
    buffer = io.BytesIO()
    loss_figure(histories).savefig(buffer, format="png")
    return buffer.getvalue()


def write_loss_plot(runs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Plot one run into RUN/loss.png, or several overlaid into out; return the file written."""
    if not runs:
        raise GptlabError("plot needs at least one run")
    if out is None:
        if len(runs) > 1:
            raise GptlabError("several runs are overlaid into one file: pass --out FILE.png")
        out = Path(runs[0]) / LOSS_PNG
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise GptlabError(f"--out {out}: unsupported image type (use {', '.join(FORMATS)})")
    check_output_file(out, [("RUN", run) for run in runs])
    fig = loss_figure([read_history(run) for run in runs])
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt))
    return out


def refresh_loss_plot(run: str | Path) -> None:
    """Rewrite RUN/loss.png during training; a failure is reported on stderr, never raised,
    so a plotting problem cannot stop or lose a training run."""
    try:
        write_loss_plot([run])
    except Exception as exc:  # noqa: BLE001 - any plotting error must not end training
        print(f"warning: could not write {Path(run) / LOSS_PNG}: {exc}", file=sys.stderr)
