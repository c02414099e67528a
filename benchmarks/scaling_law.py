"""Benchmark: the scaling law measured on this machine, and checked on a run the fit never saw.

A family of model shapes (default 5, spanning ~64x in non-embedding parameters) is trained through
gptlab's trainer at fixed training-FLOP budgets (FLOPs per token counted from each model x tokens),
every run with its own schedule; the val losses are fitted with L(N, D) = E + A/N^alpha + B/D^beta;
the fit gives the compute-optimal size per budget and PREDICTS the val loss of a held-out run (by
default twice the largest budget, at the family's shape nearest the predicted optimum), which is then
trained to check it. Every point is a JSON line (OUT/scaling_law.jsonl and stdout); a rerun with the
same setup reuses them, so a sweep can be continued or extended (bigger --sizes/--budgets, --device cuda).

    python benchmarks/scaling_law.py [--sizes 1x32,2x48,2x64,3x96,4x128] [--budgets 2.5e11,5e11,1e12]
        [--holdout-budget 2e12] [--holdout-size 3x96] [--corpus PATH] [--device cpu] [--threads 1] [--out DIR]

Ends with one JSON line: alpha, beta, predicted_val_loss, measured_val_loss, prediction_error_pct, ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptlab.errors import GptlabError, describe_os_error  # noqa: E402
from gptlab.scaling.experiment import add_arguments, run_sweep  # noqa: E402


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags: one error line and exit 2 (argparse would print the usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"scaling_law: error: {message} (see --help)\n")


def main() -> None:
    parser = _OneLineParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_arguments(parser)
    args = parser.parse_args()
    try:
        run_sweep(args)
    except GptlabError as exc:
        print(f"scaling_law: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (OSError, MemoryError) as exc:
        print(f"scaling_law: error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("scaling_law: interrupted (the points measured so far are kept in the points file)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
