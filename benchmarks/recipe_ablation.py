"""Benchmark: each newer speedrun technique alone on top of the modern recipe, on this CPU.

tinyshakespeare, char tokenizer (90/10 split), the shape of benchmarks/recipe_race.py (T=64, B=12,
4 layers, 4 heads, d=128). The baseline is the modern recipe as `cpu-modern` has it; each technique
adds its overrides to that baseline and nothing else (value embeddings, x0 mixing, smear, a logit
soft-cap, a long warm-down to a small final rate, windows growing from 16 to 64 tokens, batches growing
from 4 to 12 windows, each schedule over the first 30% of the steps; --technique NAME=k=v,k=v adds more,
e.g. an optimizer's).
Every run, baseline included, is repeated with the same seeds (--seeds) and evaluated the same way
(the same fixed val windows every few steps; seconds are training-step time only, as the trainer
logs them). Two runs per technique and seed:

    sprint   --sprint-steps steps (recipe_race's sprint): training seconds to val loss 1.886
    budget   as many steps as fill the classic recipe's whole training time (--budget-s; measured
             from a cpu-small run of 2,000 steps when not given): the val loss at its end

A technique "wins" when its median seconds to 1.886 are below the baseline's and its mean val loss
in the budget is no worse; the figures decide, the verdict is only a summary. Ends with one JSON line.

    python benchmarks/recipe_ablation.py [--quick] [--seeds 2] [--only value_embeds,resid_mix] [--no-budget]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]  # this checkout's gptlab; recipe_race's runner, shared

from gptlab.data.prepare import prepare  # noqa: E402
from recipe_race import CLASSIC_SHAPE, SHARED, TARGET, modern_overrides, run, seconds_to  # noqa: E402

# Each technique alone, as overrides on top of the modern recipe.
TECHNIQUES: dict[str, list[str]] = {
    "value_embeds": ["value_embeds=true"],
    "resid_mix": ["resid_mix=true"],
    "logit_softcap_15": ["logit_softcap=15"],
    "smear": ["smear=true"],
    "long_warmdown": ["decay_fraction=0.65", "final_lr_frac=0.05"],
    # Shape schedules (train/ramp.py) at T=64, B=12: a quarter of the full window, a third of the full batch.
    "seq_len_ramp": ["seq_len_start=16"],
    "batch_size_ramp": ["batch_size_start=4"],
}


def parse_technique(text: str) -> tuple[str, list[str]]:
    """NAME=k=v,k=v -> (NAME, ["k=v", "k=v"])."""
    name, sep, overrides = text.partition("=")
    if not sep or not name or "=" not in overrides:
        raise SystemExit(f"--technique {text!r} is not of the form NAME=key=value[,key=value...]")
    return name, overrides.split(",")


def step_seconds(evals: list[dict]) -> float:
    """Seconds per training step over a run's evaluations after the first two (warm-up excluded)."""
    first, last = evals[min(1, len(evals) - 2)], evals[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["step"] - first["step"])


def median_or_none(values: list[float | None]) -> float | None:
    """The median where every seed reached the target, else None (a miss is not averaged away)."""
    return (
        None
        if not values or any(v is None for v in values)
        else statistics.median([v for v in values if v is not None])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    parser.add_argument("--seeds", type=int, default=2, help="runs per technique (seeds 1..N)")
    parser.add_argument("--sprint-steps", type=int, default=250)
    parser.add_argument("--eval-batches", type=int, default=100)
    parser.add_argument("--budget-s", type=float, default=0.0, help="training seconds of a budget run; 0: measure")
    parser.add_argument("--no-budget", action="store_true", help="sprints only")
    parser.add_argument("--only", default="", help="comma-separated technique names (default: all)")
    parser.add_argument("--technique", action="append", default=[], help="NAME=key=value[,key=value...]")
    args = parser.parse_args()
    techniques = dict(TECHNIQUES) | dict(map(parse_technique, args.technique))
    if args.only:
        unknown = set(args.only.split(",")) - set(techniques)
        if unknown:
            raise SystemExit(
                f"--only: unknown technique(s) {', '.join(sorted(unknown))} (known: {', '.join(techniques)})"
            )
        techniques = {k: v for k, v in techniques.items() if k in args.only.split(",")}
    sprint = 10 if args.quick else args.sprint_steps
    eval_batches = 2 if args.quick else args.eval_batches
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_before[0]:.2f}")
    started = time.perf_counter()
    evaluation = [f"eval_batches={eval_batches}", "eval_batch_size=12"]
    baseline = CLASSIC_SHAPE + modern_overrides()
    figures: dict[str, dict] = {}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "shakespeare"
        prepare([str(SHARED / "tinyshakespeare.txt")], data, "char", val_fraction=0.1, progress=False)
        budget_s = args.budget_s or (2.0 if args.quick else 0.0)
        if not args.no_budget and not budget_s:
            classic = run(
                "classic", "cpu-small", CLASSIC_SHAPE + ["max_steps=2000", "eval_interval=500", *evaluation], data, root
            )
            budget_s = classic[-1]["elapsed_s"]
            print(f"the classic recipe trains for {budget_s:.1f} s: each budget run gets as long")
        for name, extra in {"baseline": [], **techniques}.items():
            sprints, budgets = [], []
            for seed in range(1, args.seeds + 1):
                common = baseline + extra + [f"seed={seed}", *evaluation]
                evals = run(
                    f"{name}-sprint-seed{seed}",
                    "cpu-small",
                    common + [f"max_steps={sprint}", f"eval_interval={max(1, sprint // 12)}"],
                    data,
                    root,
                )
                sprints.append(evals)
                if not args.no_budget:
                    # A shape schedule ramps over the same share of both runs: the sprint's mean step holds.
                    steps = max(sprint, int(budget_s / step_seconds(evals)))
                    budgets.append(
                        run(
                            f"{name}-budget-seed{seed}",
                            "cpu-small",
                            common + [f"max_steps={steps}", f"eval_interval={max(1, steps // 20)}"],
                            data,
                            root,
                        )
                    )
            to_target = [seconds_to(e, TARGET) for e in sprints]
            figures[name] = {
                "overrides": extra,
                "s_to_target_by_seed": [None if s is None else round(s, 1) for s in to_target],
                "s_to_target": median_or_none(to_target),
                "sprint_final_val_by_seed": [round(e[-1]["val_loss"], 4) for e in sprints],
                "step_ms": round(1000 * statistics.median(step_seconds(e) for e in sprints), 1),
                "val_at_budget_by_seed": [round(e[-1]["val_loss"], 4) for e in budgets],
            }

    base = figures["baseline"]
    for name, f in figures.items():
        if name == "baseline":
            continue
        faster = f["s_to_target"] is not None and (
            base["s_to_target"] is None or f["s_to_target"] < base["s_to_target"]
        )
        no_worse = not f["val_at_budget_by_seed"] or statistics.mean(f["val_at_budget_by_seed"]) <= statistics.mean(
            base["val_at_budget_by_seed"]
        )
        f["wins"] = faster and no_worse
    print(f"\n{'technique':<20} {'s to ' + str(TARGET):>12} {'val in budget':>14} {'step ms':>8}  wins")
    for name, f in figures.items():
        s = "-" if f["s_to_target"] is None else f"{f['s_to_target']:.1f}"
        v = "-" if not f["val_at_budget_by_seed"] else f"{statistics.mean(f['val_at_budget_by_seed']):.4f}"
        print(f"{name:<20} {s:>12} {v:>14} {f['step_ms']:>8}  {f.get('wins', '')}")
    summary = {
        "target_val_loss": TARGET,
        "budget_s": round(budget_s, 1),
        "sprint_steps": sprint,
        "seeds": args.seeds,
        "eval_tokens": eval_batches * 12 * 64,
        "techniques": figures,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
