"""The scaling-law experiment: sweep sizes x budgets, fit the law, predict a held-out run, train it.

Every point is one JSON line, appended to OUT/scaling_law.jsonl as soon as it is measured and
printed; a later sweep with the same setup reuses the points already there (so a cut-off sweep
continues, and a GPU can add bigger sizes and budgets to a CPU's points). The figures end up in
OUT/scaling_law.json, OUT/scaling_law.png, and as the last line printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.outputs import check_output_dir

DEFAULT_SIZES = "1x32,2x48,2x64,3x96,4x128"
DEFAULT_BUDGETS = "2.5e11,5e11,1e12"
DEFAULT_CORPUS = str(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "tinyshakespeare.txt")
POINTS, SUMMARY, PLOT = "scaling_law.jsonl", "scaling_law.json", "scaling_law.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's flags (shared by benchmarks/scaling_law.py and `gptlab sweep`)."""
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"the model family, LAYERSxWIDTH[xHEADS] comma-separated (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--budgets",
        default=DEFAULT_BUDGETS,
        help=f"training FLOP budgets of the fit, comma-separated (default {DEFAULT_BUDGETS})",
    )
    parser.add_argument(
        "--holdout-budget", default=None, help="FLOP budget of the held-out run (default: twice the largest budget)"
    )
    parser.add_argument(
        "--holdout-size",
        default=None,
        help="shape of the held-out run (default: the family's shape nearest the fitted "
        "compute-optimal size at the held-out budget)",
    )
    parser.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help="corpus to train on: a path or built-in name, or a prepared dataset directory "
        "(default: ../shared/data/tinyshakespeare.txt)",
    )
    parser.add_argument("--tokenizer", default="char", help="tokenizer to prepare the corpus with (default char)")
    parser.add_argument("--preset", default="cpu-modern", help="recipe every run starts from (default cpu-modern)")
    parser.add_argument("--block-size", type=int, default=64, help="context length T (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step B (default 16)")
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=20,
        help="val batches behind each point's loss, the same windows for every run (default 20)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch; 0: torch's default (default 1: these small models gain little "
        "from a second thread, and on a shared, loaded machine two threads run many times slower)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (repeatable), e.g. --set compile=on",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/scaling_law"),
        help=f"where {POINTS}, {SUMMARY} and {PLOT} go (default runs/scaling_law)",
    )


def is_sweep_dir(path: Path) -> bool:
    """Whether path holds nothing but what a sweep writes (its points, summary and plot, and the
    temporary files of their atomic writes): the one kind of directory a sweep writes into."""
    return all(entry.name in (POINTS, SUMMARY, PLOT) or entry.match(".*.tmp") for entry in path.iterdir())


def _options(args: argparse.Namespace) -> tuple[list, list[float], Any, Any]:
    """Parse and check the flags before any work: shapes, budgets, held-out budget and shape."""
    from gptlab.scaling.sweep import parse_budget, parse_shape

    shapes = [parse_shape(s) for s in args.sizes.split(",") if s.strip()]
    budgets = sorted({parse_budget(b) for b in args.budgets.split(",") if b.strip()})
    if len({s.name for s in shapes}) < 2 or len(budgets) < 2 or len(shapes) * len(budgets) < 5:
        raise GptlabError(
            f"--sizes and --budgets need at least 2 distinct sizes, 2 budgets and 5 points in all "
            f"for the fit (got {len(shapes)} sizes x {len(budgets)} budgets)"
        )
    holdout_budget = parse_budget(args.holdout_budget) if args.holdout_budget else 2 * budgets[-1]
    holdout_shape = parse_shape(args.holdout_size) if args.holdout_size else None
    if holdout_budget in budgets and (holdout_shape is None or holdout_shape.name in {s.name for s in shapes}):
        raise GptlabError(
            f"the held-out run (budget {holdout_budget:g}) would be one of the fitted points; "
            "give a --holdout-budget outside --budgets or a --holdout-size outside --sizes"
        )
    for name in ("block_size", "batch_size", "eval_batches"):
        if getattr(args, name) < 1:
            raise GptlabError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.threads < 0:
        raise GptlabError(f"--threads must be at least 0 (0: torch's default; got {args.threads})")
    return shapes, budgets, holdout_budget, holdout_shape


def _dataset(args: argparse.Namespace, tmp: Path) -> Path:
    """A prepared dataset directory: --corpus itself when it is one, else --corpus prepared into tmp."""
    from gptlab.data.prepare import prepare

    given = Path(args.corpus)
    if (given / "meta.json").is_file():
        return given
    out = tmp / "data"
    print(f"preparing {args.corpus} with the {args.tokenizer} tokenizer", flush=True)
    prepare([args.corpus], out, args.tokenizer, progress=False)
    return out


def _emit(record: dict[str, Any], points_file: Path) -> None:
    """One point: a JSON line appended to the points file (flushed) and printed."""
    line = json.dumps(record)
    with open(points_file, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line, flush=True)


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment from parsed flags; returns the summary (also written and printed last)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _sweep(args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process keeps its own setting


def _sweep(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gptlab.data.loader import Dataset
    from gptlab.scaling.fit import compute_optimal, fit_scaling_law
    from gptlab.scaling.plot import plot_sweep
    from gptlab.scaling.sweep import Setup, family_flops, read_points, run_point, sizing, steps_for

    shapes, budgets, holdout_budget, holdout_shape = _options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    out: Path = args.out
    check_output_dir(out, [("--corpus", args.corpus)], "a sweep's directory", is_sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    points_file = out / POINTS
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="scaling-law-") as tmp_name:
        tmp = Path(tmp_name)
        data = _dataset(args, tmp)
        setup = Setup(
            data=data,
            vocab_size=Dataset(data).tokenizer.vocab_size,
            corpus=f"{args.corpus} ({args.tokenizer})",
            preset=args.preset,
            block_size=args.block_size,
            batch_size=args.batch_size,
            eval_batches=args.eval_batches,
            device=args.device,
            overrides=tuple(args.overrides),
        )
        signature = setup.signature()
        sizes = {s.name: sizing(setup, s) for s in shapes}  # refuses bad --set overrides before any training
        for s in shapes:
            z = sizes[s.name]
            print(
                f"size {s.name}: N = {z.non_embedding_params:,} non-embedding parameters "
                f"({z.total_params:,} in all), {z.train_flops_per_token:,} training FLOPs per token; steps per "
                f"budget: {', '.join(str(steps_for(setup, z, b)) for b in budgets)}",
                flush=True,
            )
        span = max(z.non_embedding_params for z in sizes.values()) / min(z.non_embedding_params for z in sizes.values())
        print(
            f"{len(shapes)} sizes spanning {span:.1f}x in N, {len(budgets)} budgets: "
            f"{', '.join(f'{b:.3g}' for b in budgets)} FLOPs",
            flush=True,
        )
        done = read_points(points_file, signature)

        def measure(shape: Any, budget: float, role: str) -> dict[str, Any]:
            for p in done:
                if p["size"] == shape.name and p["budget_flops"] == budget and p["role"] == role:
                    print(f"reusing {shape.name} at {budget:.3g} FLOPs from {points_file}", flush=True)
                    return p
            print(f"--- {role}: {shape.name} at {budget:.3g} FLOPs", flush=True)
            record = run_point(setup, shape, budget, tmp / f"{role}-{shape.name}-{budget:.3g}", role)
            _emit(record, points_file)
            return record

        points = [measure(shape, budget, "fit") for budget in budgets for shape in shapes]
        law = fit_scaling_law(
            [p["non_embedding_params"] for p in points], [p["tokens"] for p in points], [p["val_loss"] for p in points]
        )
        flops = family_flops(list(sizes.values()))
        n_lo = min(z.non_embedding_params for z in sizes.values()) / 2
        n_hi = max(z.non_embedding_params for z in sizes.values()) * 2
        optimal = []
        for budget in budgets:
            n_opt, l_opt = compute_optimal(law, budget, flops, (n_lo, n_hi))
            best = min((p for p in points if p["budget_flops"] == budget), key=lambda p: p["val_loss"])
            optimal.append(
                {
                    "budget_flops": budget,
                    "optimal_params": round(n_opt),
                    "optimal_val_loss": round(l_opt, 4),
                    "best_measured_size": best["size"],
                    "best_measured_val_loss": round(best["val_loss"], 4),
                }
            )
        print(
            f"fit: L(N, D) = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f} "
            f"(rms residual {law.rmse:.4f}); N_opt ~ C^{law.optimal_size_exponent:.2f}",
            flush=True,
        )
        for o in optimal:
            print(
                f"  budget {o['budget_flops']:.3g}: compute-optimal N ~ {o['optimal_params']:,} (fit), best measured "
                f"{o['best_measured_size']} at {o['best_measured_val_loss']}",
                flush=True,
            )

        holdout_opt, _ = compute_optimal(law, holdout_budget, flops, (n_lo, n_hi))
        if holdout_shape is None:  # the family's shape nearest the predicted optimum, in log N
            holdout_shape = min(shapes, key=lambda s: abs(math.log(sizes[s.name].non_embedding_params / holdout_opt)))
        h_size = sizing(setup, holdout_shape)
        h_tokens = steps_for(setup, h_size, holdout_budget) * setup.batch_size * setup.block_size
        predicted = float(law.loss(h_size.non_embedding_params, h_tokens))
        print(
            f"prediction, before training it: {holdout_shape.name} (N = {h_size.non_embedding_params:,}) at "
            f"{holdout_budget:.3g} FLOPs ({h_tokens:,} tokens) -> val loss {predicted:.4f}",
            flush=True,
        )
        holdout = measure(holdout_shape, holdout_budget, "holdout")
        measured = holdout["val_loss"]
    error_pct = 100 * (predicted - measured) / measured
    print(f"held out: predicted {predicted:.4f}, measured {measured:.4f} ({error_pct:+.2f}%)", flush=True)
    plot_sweep(points, law, flops, holdout, predicted, out / PLOT)
    print(f"wrote {out / PLOT}", flush=True)
    summary = {
        "alpha": round(law.alpha, 4),
        "beta": round(law.beta, 4),
        "E": round(law.E, 4),
        "A": round(law.A, 4),
        "B": round(law.B, 4),
        "fit_rmse": round(law.rmse, 5),
        "optimal_size_exponent": round(law.optimal_size_exponent, 4),
        "compute_optimal": optimal,
        "holdout_size": holdout_shape.name,
        "holdout_params": h_size.non_embedding_params,
        "holdout_budget_flops": holdout_budget,
        "holdout_tokens": holdout["tokens"],
        "predicted_val_loss": round(predicted, 4),
        "measured_val_loss": round(measured, 4),
        "prediction_error_pct": round(error_pct, 2),
        "sizes": [s.name for s in shapes],
        "non_embedding_params": [sizes[s.name].non_embedding_params for s in shapes],
        "params_span": round(span, 1),
        "budgets_flops": budgets,
        "points": len(points),
        "train_s": round(sum(p["train_s"] for p in [*points, holdout]), 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "device": args.device,
        "torch": torch.__version__,
    }
    atomic_write_json(out / SUMMARY, summary)
    print(json.dumps(summary), flush=True)
    return summary
