"""``effscale validate STUDY.toml``: train the proxy scaled to a larger φ by the found
coefficients, the paper's, width only, depth only and resolution only at matched MACs, and
retrain the top-k trials there for the proxy-rank fidelity. See :mod:`effscale.search.validate`."""

from __future__ import annotations

import argparse
import sys

from ..study_file import load_study_file
from ..validate import METHODS, validate_study
from ._output import print_records
from ._types import nonnegative_int, positive_int

__all__ = ["configure", "run", "parse_methods"]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1,2`` → the training seeds (distinct integers >= 0)."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"invalid seeds {text!r}; use distinct integers >= 0 such as 0,1,2"
        )
    return seeds


def parse_methods(text: str) -> tuple[str, ...]:
    """``found,paper,width`` → the methods, each one of :data:`..validate.METHODS`."""

    methods = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(
            f"invalid method {bad[0] if bad else text!r}; use a comma list of {', '.join(METHODS)}"
        )
    return methods


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; use a number > 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale validate``."""
    parser.description = (
        "At a larger phi, train the search's proxy scaled by the found "
        "coefficients, the paper's, width only, depth only and resolution only, all "
        "at the found model's MACs (within 5%%); retrain the top-k trials there and "
        "report the Spearman correlation with their search AP. Writes "
        "validation.csv/.md/.png/.json and fidelity.csv into --out, atomically."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the finished study's file")
    parser.add_argument(
        "--phi", type=float, default=2.0, help="the larger phi to validate at, > 1 (default 2)"
    )
    parser.add_argument(
        "--top-k",
        type=nonnegative_int(),
        default=5,
        metavar="K",
        help="trials to retrain for the rank fidelity (default 5; 0 skips)",
    )
    parser.add_argument(
        "--trial",
        type=nonnegative_int(),
        metavar="N",
        help="the found trial (default: the best feasible)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: <study folder>/<name>-validate-phi<phi>)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override [train] device")
    parser.add_argument(
        "--methods",
        type=parse_methods,
        metavar="LIST",
        help="comma list of found, paper, width, depth, resolution (default: all)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=positive_int(),
        help="override the training budget: optimizer steps per model",
    )
    budget.add_argument("--epochs", type=positive_int(), help="override: epochs per model")
    budget.add_argument(
        "--seconds",
        type=_positive_float,
        help="refused: a wall-clock budget depends on load (use --steps or --epochs)",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        metavar="0,1,2",
        help="training seeds of every method and trial (default: the study's [study] seeds)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate; prints the comparison and the fidelity. Returns 0."""

    definition = load_study_file(args.study)
    budget = {
        name: getattr(args, name)
        for name in ("steps", "epochs", "seconds")
        if getattr(args, name) is not None
    }
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = validate_study(
        definition,
        phi=args.phi,
        top_k=args.top_k,
        trial=args.trial,
        out=args.out,
        overwrite=args.overwrite,
        storage=args.storage,
        device=args.device,
        methods=args.methods or METHODS,
        budget=budget or None,
        seeds=args.seeds,
        log=log,
    )
    cols = ("method", "coefficient", "value", "image_size", "gmacs", "macs_ratio", "matched")
    rows = []
    for r in result.rows:
        ci = "" if r["ap_ci_low"] is None else f" [{r['ap_ci_low']:.4f}, {r['ap_ci_high']:.4f}]"
        diff = ""
        if r["method"] != "found" and r["diff_to_found"] is not None:
            diff = f"{r['diff_to_found']:+.4f}"
            if r["diff_ci_low"] is not None:
                diff += (
                    f" [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}] "
                    f"p {r['diff_p_value']:.3g}"
                )
        rows.append(
            {
                **{k: r[k] for k in cols},
                "matched": "yes" if r["matched"] else "no",
                "AP (95% CI)": "–" if r["ap"] is None else f"{r['ap']:.4f}{ci}",
                "vs found": diff,
            }
        )
    print_records(
        rows, "table", title=f"trial {result.trial} at phi = {result.phi:g}, matched MACs"
    )
    if result.fidelity:
        print_records(
            [{k: r[k] for k in ("rank", "trial", "search_ap", "ap")} for r in result.fidelity],
            "table",
            title="proxy-rank fidelity",
        )
    rho = "undefined" if result.rho is None else f"{result.rho:.4f}"
    if result.rho is not None and result.p_value is not None:
        rho += f" (p = {result.p_value:.3g})"
    print(f"Spearman rho (top {len(result.fidelity)}): {rho}; wrote {result.out}")
    return 0
