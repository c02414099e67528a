"""Benchmark: the classic recipe against the modern one, side by side, on this CPU.

1. tinyshakespeare, char tokenizer (90/10 split). classic: the `cpu-small` preset (GPT-2 recipe,
   T=64, B=12, 4 layers, 4 heads, d=128, AdamW, cosine, 2,000 steps). modern: the same shape with the
   modern recipe (`cpu-modern`'s switches: RoPE, RMSNorm, QK-norm, ReLU², untied zero-initialised
   head, Muon + AdamW by role, warm-up-stable-decay), as a short sprint (--sprint-steps) and as a run
   given the classic's whole training time (its step count set from its measured step time).
   Figures: the training seconds each needs to reach val loss 1.886 (nanoGPT's 2,000-step result on
   the classic config; the classic counts its full time if it stops short), and the modern run's val
   loss after as many training seconds as the classic took in all.
2. Tang poems (char tokenizer, whole poems held out for val): the modern recipe given 120 s and
   900 s of training (each its own run, its schedule fitted to its budget), val bits per character.
3. The optimizer step of each recipe at the classic's shape, side by side: both built as the trainer
   builds them (precision=auto and muon_precision=auto included), timed in alternating rounds on random tokens;
   modern_step_vs_classic is the ratio of their median step times (goal: at most 1.2).

Every run is evaluated the same way: the same fixed val windows (--eval-batches x B x T tokens)
every --eval-every steps; seconds are training-step time only (evaluation excluded), as the trainer
logs them. Writes recipe_race.png (val loss against training seconds) and ends with one JSON line.

    python benchmarks/recipe_race.py [--quick] [--seeds 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.data.prepare import prepare  # noqa: E402
from gptlab.model.accounting import count_params  # noqa: E402
from gptlab.model.presets import MODERN_MODEL, MODERN_TRAIN  # noqa: E402
from gptlab.train.bench import setup_bench  # noqa: E402
from gptlab.train.trainer import train  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TARGET = 1.886
CLASSIC_SHAPE = ["n_layer=4", "n_head=4", "n_embd=128", "block_size=64", "batch_size=12"]


def modern_overrides() -> list[str]:
    """The modern recipe's switches as overrides (the cpu-modern preset's model and train parts)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in {**MODERN_MODEL, **MODERN_TRAIN}.items()]


def run(name: str, preset: str, overrides: list[str], data: Path, root: Path) -> list[dict]:
    """Train one run; return its eval records (step, elapsed_s, val_loss) in order."""
    cfg = build_config(preset, None, overrides + ["sample_tokens=0", "checkpoint_interval=1000000", "device=cpu"])
    cfg.data = str(data)
    print(f"--- {name}: {' '.join(overrides)}", flush=True)
    train(cfg, root / name)
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    last = evals[-1]
    print(
        f"=== {name}: {last['step']} steps, {last['elapsed_s']:.1f} s of training, val loss {last['val_loss']:.4f}",
        flush=True,
    )
    return evals


def seconds_to(evals: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation with val loss <= target (None: never)."""
    return next((e["elapsed_s"] for e in evals if e["val_loss"] <= target), None)


def val_at(evals: list[dict], seconds: float) -> float:
    """Val loss at the last evaluation taken within `seconds` of training."""
    return [e for e in evals if e["elapsed_s"] <= seconds * 1.02 or e is evals[0]][-1]["val_loss"]


def step_seconds(preset: str, overrides: list[str], data: Path, root: Path, name: str) -> float:
    """Seconds per training step of a config, from a short run (its first steps excluded: warm-up)."""
    evals = run(
        name, preset, overrides + ["max_steps=60", "eval_interval=30", "eval_batches=1", "warmup_steps=0"], data, root
    )
    return (evals[-1]["elapsed_s"] - evals[1]["elapsed_s"]) / 30


def side_by_side_step_ms(rounds: int, steps: int = 10) -> dict:
    """Median milliseconds per optimizer step of the classic and the modern recipe at the classic's
    shape, timed in alternating rounds of `steps` steps (so a busy machine slows both alike)."""
    setups = {
        "classic": setup_bench("cpu-small", "cpu", "auto", CLASSIC_SHAPE),
        "modern": setup_bench("cpu-small", "cpu", "auto", CLASSIC_SHAPE + modern_overrides()),
    }
    for setup in setups.values():
        for _ in range(3):  # warm-up: allocator, kernels built for the shapes
            setup.step()
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            start = time.perf_counter()
            for _ in range(steps):
                setup.step()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    precisions = {name: setup.runner.precision.name for name, setup in setups.items()}
    muon = setups["modern"].runner.muon_precision  # Muon's orthogonalisation has its own, measured apart
    precisions["modern_muon"] = muon.name if muon is not None else None
    print(f"step, side by side: classic {medians['classic']:.1f} ms, modern {medians['modern']:.1f} ms ({precisions})")
    return {"ms": {name: round(ms, 1) for name, ms in medians.items()}, "precision": precisions}


def tang_bpc(runs: dict[float, list[dict]], budgets: tuple[float, ...], which: int) -> float | None:
    """The val bits per character at the end of the which-th Tang budget's run; None if not run."""
    return round(runs[budgets[which]][-1]["val_bpc"], 3) if which < len(budgets) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    parser.add_argument("--seeds", type=int, default=1, help="modern sprints with this many seeds")
    parser.add_argument("--sprint-steps", type=int, default=250)
    parser.add_argument("--eval-batches", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("."), help="where recipe_race.png goes")
    parser.add_argument(
        "--tang-budgets",
        default="120,900",
        help="Tang poems runs, seconds of training (default 120,900; '120' alone leaves tang_bpc_900s null)",
    )
    args = parser.parse_args()
    wanted = tuple(float(b) for b in args.tang_budgets.split(",") if b)
    classic_steps, tang_budgets = (100, (10.0, 20.0)) if args.quick else (2000, wanted)
    sprint = 30 if args.quick else args.sprint_steps
    load_before = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"load average {load_before[0]:.2f}"
    )
    started = time.perf_counter()
    # The same evaluation for every Shakespeare run: the same fixed windows (B=12, T=64).
    evaluation = [f"eval_batches={args.eval_batches}", "eval_batch_size=12"]

    side_by_side = side_by_side_step_ms(rounds=3 if args.quick else 15)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shakespeare = root / "shakespeare"
        prepare([str(SHARED / "tinyshakespeare.txt")], shakespeare, "char", val_fraction=0.1, progress=False)

        classic = run(
            "classic",
            "cpu-small",
            CLASSIC_SHAPE + [f"max_steps={classic_steps}", "eval_interval=100", *evaluation],
            shakespeare,
            root,
        )
        classic_s = classic[-1]["elapsed_s"]
        modern_shape = CLASSIC_SHAPE + modern_overrides()
        sprints = [
            run(
                f"modern-sprint-seed{seed}",
                "cpu-small",
                modern_shape
                + [f"max_steps={sprint}", f"eval_interval={max(1, sprint // 12)}", f"seed={seed}", *evaluation],
                shakespeare,
                root,
            )
            for seed in range(1, args.seeds + 1)
        ]
        per_step = step_seconds("cpu-small", modern_shape, shakespeare, root, "modern-step-time")
        full_steps = max(sprint, int(classic_s / per_step))
        print(f"modern step {per_step * 1000:.1f} ms: {full_steps} steps fill the classic's {classic_s:.1f} s")
        full = run(
            "modern-full",
            "cpu-small",
            modern_shape + [f"max_steps={full_steps}", f"eval_interval={max(1, full_steps // 20)}", *evaluation],
            shakespeare,
            root,
        )

        tang = root / "tang"
        prepare([str(SHARED / "tang_poems.jsonl")], tang, "char", progress=False)
        tang_shape = ["n_layer=4", "n_head=4", "n_embd=128", "block_size=128", "batch_size=16"] + modern_overrides()
        tang_step = step_seconds("cpu-small", tang_shape, tang, root, "tang-step-time")
        tang_runs = {}
        for budget in tang_budgets:
            # A margin: steps run a little slower inside a long run than in the short timing run.
            steps = max(20, int(0.93 * budget / tang_step))
            tang_runs[budget] = run(
                f"tang-{budget:.0f}s",
                "cpu-small",
                tang_shape
                + [f"max_steps={steps}", f"eval_interval={max(1, steps // 10)}", f"eval_batches={args.eval_batches}"],
                tang,
                root,
            )
        params = {
            "classic": count_params(build_config("cpu-small", None, CLASSIC_SHAPE + ["vocab_size=65"]).model).total,
            "modern": count_params(build_config("cpu-small", None, modern_shape + ["vocab_size=65"]).model).total,
        }

    classic_to = seconds_to(classic, TARGET)
    sprint_to = [seconds_to(s, TARGET) for s in sprints]
    # The sprints' median over seeds; the full run's crossing where a sprint stopped short.
    reached = sorted(s for s in sprint_to if s is not None)
    modern_to = reached[len(reached) // 2] if len(reached) == len(sprint_to) else seconds_to(full, TARGET)
    figures = {
        "target_val_loss": TARGET,
        "classic_s_to_target": round(classic_to if classic_to is not None else classic_s, 1),
        "classic_reached_target": classic_to is not None,
        "classic_final_val_loss": round(classic[-1]["val_loss"], 4),
        "classic_train_s": round(classic_s, 1),
        "modern_s_to_target": None if modern_to is None else round(modern_to, 1),
        "modern_sprint_s_to_target_by_seed": [None if s is None else round(s, 1) for s in sprint_to],
        "speedup_to_target": None if modern_to is None else round((classic_to or classic_s) / modern_to, 2),
        "modern_val_at_classic_s": round(val_at(full, classic_s), 4),
        "modern_full_steps": full_steps,
        "modern_step_ms": round(per_step * 1000, 1),
        "classic_step_ms": round(classic_s / classic[-1]["step"] * 1000, 1),
        "modern_step_vs_classic": round(side_by_side["ms"]["modern"] / side_by_side["ms"]["classic"], 2),
        "step_ms_side_by_side": side_by_side["ms"],
        "precision": side_by_side["precision"],
        # Bits per character of the val text, as the trainer logs them (tokens include the separators
        # between poems, so nats per token / ln 2 would not be per character).
        "tang_bpc_120s": tang_bpc(tang_runs, tang_budgets, 0),
        "tang_bpc_900s": tang_bpc(tang_runs, tang_budgets, 1),
        "tang_train_s": [round(r[-1]["elapsed_s"], 1) for r in tang_runs.values()],
        "params": params,
        "eval_tokens": args.eval_batches * 12 * 64,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "torch": torch.__version__,
    }
    plot(classic, sprints[0], full, tang_runs, args.out / "recipe_race.png")
    print(
        f"val loss {TARGET}: classic {figures['classic_s_to_target']} s, modern {figures['modern_s_to_target']} s; "
        f"modern after {classic_s:.0f} s: {figures['modern_val_at_classic_s']}; Tang bits/char "
        + ", ".join(f"after {b:.0f} s {tang_bpc(tang_runs, tang_budgets, i)}" for i, b in enumerate(tang_budgets))
    )
    print(json.dumps(figures))


def plot(classic: list[dict], sprint: list[dict], full: list[dict], tang: dict[float, list[dict]], path: Path) -> None:
    """Val loss against training seconds: Shakespeare (both recipes) and Tang poems (modern)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, evals in (("classic (GPT-2 recipe)", classic), ("modern, sprint", sprint), ("modern, same time", full)):
        left.plot([e["elapsed_s"] for e in evals], [e["val_loss"] for e in evals], marker=".", label=label)
    left.axhline(TARGET, color="gray", linestyle="--", linewidth=0.8, label=f"val loss {TARGET}")
    left.set(title="tinyshakespeare (char)", xlabel="training seconds", ylabel="val loss (nats/char)", ylim=(1.3, 3.0))
    left.legend()
    for budget, evals in tang.items():
        right.plot(
            [e["elapsed_s"] for e in evals],
            [e["val_bpc"] for e in evals],
            marker=".",
            label=f"modern, {budget:.0f} s budget",
        )
    right.set(title="Tang poems (char)", xlabel="training seconds", ylabel="val bits per character")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
