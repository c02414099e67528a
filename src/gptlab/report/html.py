"""RUN/report.html: one self-contained page about a run (images inlined, no network needed).

Sections: summary (final losses in nats and bits per byte, throughput, MFU), loss curves,
samples in training order, configuration, parameter breakdown, data summary.
"""

from __future__ import annotations

import base64
import statistics
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from gptlab.fileio import atomic_write_text
from gptlab.model.accounting import ROLE_NAMES, count_params, describe, flops_per_token, human
from gptlab.report.history import RunHistory, read_history, read_samples
from gptlab.report.plot import png_bytes

REPORT = "report.html"
NO_EVAL = "No evaluation yet: final losses appear after the run's first evaluation."

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f4; padding: 0.7em; white-space: pre-wrap; border-radius: 4px; }
.muted { color: #777; } .note { background: #fff6dd; padding: 0.6em 0.9em; border-radius: 4px; }
img { max-width: 100%; }
"""


def write_report(run: str | Path) -> tuple[Path, list[str]]:
    """Write RUN/report.html; return its path and notes for the user (e.g. no eval yet)."""
    hist = read_history(run)
    notes = [] if hist.has_eval else [NO_EVAL]
    out = hist.path / REPORT
    atomic_write_text(out, render_report(hist))
    return out, notes


def render_report(hist: RunHistory) -> str:
    """The report page for a run's history, as one HTML string."""
    last_step = max(int(m.get("step", 0)) for m in hist.metrics)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{escape(hist.name)}</h1>",
        f'<p class="muted">{escape(str(hist.path.resolve()))} · step {last_step:,} · report written {generated}</p>',
        "<h2>Summary</h2>",
        _summary(hist),
        "<h2>Loss curves</h2>",
        f'<img alt="loss curves" src="data:image/png;base64,{base64.b64encode(png_bytes([hist])).decode()}">',
        "<h2>Samples during training</h2>",
        _samples(hist),
        "<h2>Configuration</h2>",
        _config(hist),
        "<h2>Parameters</h2>",
        _params(hist),
        "<h2>Data</h2>",
        _data(hist),
    ]
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(hist.name)}: gptlab report</title><style>{_STYLE}</style></head>\n"
        f"<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    cells = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{cells}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{escape(f"{value:,}" if isinstance(value, int) else f"{value:.4g}")}</td>'
    return f"<td>{escape(str(value))}</td>"


def _summary(hist: RunHistory) -> str:
    parts = []
    finals = hist.final_losses()
    if finals:
        rows = [
            [
                f.split,
                f.step,
                f"{f.nats:.4f}",
                "n/a (no data_meta.json)" if f.bits_per_byte is None else f"{f.bits_per_byte:.4f}",
            ]
            for f in finals
        ]
        parts.append(_table(rows, ["split", "at step", "loss (nats/token)", "bits per byte"]))
    else:
        parts.append(f'<p class="note" id="no-eval">{escape(NO_EVAL)}</p>')
    rates = hist.values("tokens_per_sec")
    rows = []
    if rates:
        rows.append(["throughput (tokens/s)", f"median {statistics.median(rates):,.0f}, last {rates[-1]:,.0f}"])
    mfu = hist.values("mfu")
    if mfu:
        # mfu is a fraction of the device's peak FLOP/s.
        rows.append(["MFU (model FLOPs utilisation)", f"median {statistics.median(mfu):.2%}, last {mfu[-1]:.2%}"])
    tokens = [m["tokens_seen"] for m in hist.metrics if "tokens_seen" in m]
    if tokens:
        rows.append(["tokens seen", f"{max(tokens):,}"])
    elapsed = [m["elapsed_s"] for m in hist.metrics if "elapsed_s" in m]
    if elapsed:
        rows.append(["training time", f"{max(elapsed):,.1f} s"])
    if rows:
        parts.append(_table(rows))
    return "\n".join(parts)


def _samples(hist: RunHistory) -> str:
    samples = read_samples(hist.path)
    if not samples:
        return '<p class="muted">No samples recorded (sample_tokens=0, or no evaluation yet).</p>'
    return "\n".join(f'<h3>step {step:,}</h3>\n<pre class="sample">{escape(text)}</pre>' for step, text in samples)


def _config(hist: RunHistory) -> str:
    cfg = hist.config.to_dict()
    # Values as written in a TOML file or override (seed 1337, not 1,337).
    rows = [
        [f"{section}.{key}", repr(value) if isinstance(value, str) else str(value)]
        for section in ("model", "train")
        for key, value in cfg[section].items()
    ]
    rows += [["preset", cfg["preset"] or "(none)"], ["data", cfg["data"]]]
    return _table(rows, ["field", "value"])


def _params(hist: RunHistory) -> str:
    model = hist.config.model
    if model.vocab_size <= 0:
        return '<p class="muted">vocab_size unknown: no parameter count.</p>'
    p, f = count_params(model), flops_per_token(model)
    tied = " (tied to the unembedding)" if p.tied else ""
    rows = [
        [
            ("token embedding" + tied)
            if place == "token embedding"
            else (f"blocks ({model.n_layer})" if place == "blocks" else place),
            n,
        ]
        for place, n in p.by_place.items()
    ]
    rows += [[f"by role: {ROLE_NAMES[role]}", n] for role, n in p.by_role.items() if n]
    rows += [
        ["total", p.total],
        ["forward FLOPs per token", human(f["forward"])],
        ["training FLOPs per token", human(f["train"])],
    ]
    return _table(rows, ["part", "parameters"]) + f"<pre>{escape(chr(10).join(describe(model)))}</pre>"


def _data(hist: RunHistory) -> str:
    meta = hist.data_meta
    if not meta:
        return '<p class="muted">No data summary (the run has no data_meta.json).</p>'
    tok = meta.get("tokenizer") or {}
    parts = [
        f"<p>tokenizer: {escape(str(tok.get('kind', '?')))}, vocabulary size "
        f"{escape(str(tok.get('vocab_size', '?')))}; "
        f"sources: {escape(', '.join(map(str, meta.get('sources', []))))}</p>"
    ]
    splits = meta.get("splits") or {}
    keys = ["tokens", "documents", "chars", "bytes"]
    parts.append(_table([[name] + [s.get(k, "") for k in keys] for name, s in splits.items()], ["split"] + keys))
    skipped = meta.get("skipped") or {}
    if skipped:
        parts.append(_table([[why, n] for why, n in skipped.items()], ["skipped", "count"]))
    return "\n".join(parts)
