"""``effscale confirm STUDY.toml --top-k K --seeds S``: retrain the best points on more seeds (a
racing step) and show the region after it. See :mod:`..confirm`."""

from __future__ import annotations

import argparse
import sys

from ..confirm import confirm_study
from ..study_file import load_study_file
from ._output import print_records
from ._types import positive_int

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale confirm``."""
    parser.description = (
        "Retrain the K feasible trials of highest mean AP on S more seeds each (the same new "
        "seeds for all), store the APs with the study (never over a trial) and show the region "
        "and verdict after it."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument(
        "--top-k",
        type=positive_int("K"),
        default=3,
        metavar="K",
        help="trials to retrain (default 3)",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int("S"),
        default=3,
        metavar="S",
        help="new seeds per trial (default 3)",
    )
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override [train] device")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Confirm; prints the retrained trials and the region. Returns 0."""
    definition = load_study_file(args.study)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = confirm_study(
        definition,
        top_k=args.top_k,
        seeds=args.seeds,
        storage=args.storage,
        device=args.device,
        log=log,
    )
    rows = [
        {
            "trial": n,
            "seeds": ", ".join(map(str, result.seeds)),
            "AP per new seed": ", ".join(f"{a:.4f}" for a in aps),
        }
        for n, aps in result.aps.items()
    ]
    print_records(
        rows, "table", title=f"confirmed {len(rows)} trials on {len(result.seeds)} more seeds"
    )
    region = result.region
    ranges = ", ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in region.ranges.items())
    print(f"region: trials {', '.join(map(str, region.members))}; spans {ranges}")
    print(f"verdict: {region.advice}")
    return 0
