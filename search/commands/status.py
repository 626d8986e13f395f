"""``effscale status STUDY.toml``: the trials of a study, its best feasible point and, with two
objectives, the Pareto front (AP up, MACs down)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..definition import StudyDefinition
from ..study_file import load_study_file
from ..trials import (
    Region,
    best_trial,
    constraint_values,
    cost_ratio_spread,
    count_states,
    find_region,
    load_study,
    pareto_front,
    study_confirmations,
    trial_ap,
    trial_coordinates,
    trial_record,
)
from ._output import add_format_argument, json_text, print_records

__all__ = ["configure", "run", "status_document"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale status``."""
    parser.description = (
        "Read the study of STUDY.toml from its storage (never creating it) and show "
        "its trials, the best feasible trial and, for two objectives, the Pareto "
        "front."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    add_format_argument(parser, choices=("table", "json"))
    parser.set_defaults(func=run)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def status_document(
    definition: StudyDefinition,
    trials: list[Any],
    *,
    packing: dict[str, Any] | None = None,
    confirmations: dict[int, dict[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """The ``--format json`` object: counts, ``best`` (alpha, beta, gamma, value, number or
    ``null``), the answer with its noise (``region``: trial numbers, ``region_ranges``:
    ``{"alpha": [lo, hi], "beta": .., "gamma": ..}``, ``verdict``: resolved, tied or noise, and
    ``advice``, see :func:`..trials.find_region`), ``cost_ratio_range`` (the feasible trials'
    lowest and highest cost ratio), ``pareto`` (trial numbers; two objectives only), every trial
    and, when given, ``packing`` (how the last GPU run packed trials: the study's ``packing``
    user attr)."""

    counts = count_states(trials)
    spread = cost_ratio_spread(trials)
    best = best_trial(trials)
    document: dict[str, Any] = {
        "study": definition.study.name,
        "objectives": list(definition.study.objectives),
        "n_trials": definition.target_trials(),
        "n_complete": counts["COMPLETE"],
        "n_pruned": counts["PRUNED"],
        "n_failed": counts["FAIL"],
        "n_running": counts["RUNNING"],
        "best": None,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "values": None if t.values is None else [_finite(v) for v in t.values],
                "constraints": constraint_values(t),
                "user_attrs": {k: _finite(v) for k, v in t.user_attrs.items()},
            }
            for t in trials
        ],
    }
    if best is not None:
        c = trial_coordinates(best)
        document["best"] = {
            "alpha": c["alpha"],
            "beta": c["beta"],
            "gamma": c["gamma"],
            "value": trial_ap(best),
            "number": best.number,
        }
    document.update(find_region(trials, confirmations=confirmations).to_dict())
    document["cost_ratio_range"] = None if spread is None else list(spread)
    if len(definition.study.objectives) == 2:
        document["pareto"] = [t.number for t in pareto_front(trials)]
    if packing is not None:
        document["packing"] = packing
    return document


def run(args: argparse.Namespace) -> int:
    """Print the study's status as tables or one JSON object; returns 0."""

    definition = load_study_file(args.study)
    study = load_study(definition, args.storage)
    trials = study.get_trials(deepcopy=False)
    packing = study.user_attrs.get("packing")
    confirmations = study_confirmations(study)
    if args.format == "json":
        document = status_document(definition, trials, packing=packing, confirmations=confirmations)
        sys.stdout.write(json_text(document) + "\n")
        return 0
    records = [trial_record(t) for t in trials]
    if records:
        print_records(
            records,
            "table",
            title=f"Study {definition.study.name!r}: "
            f"{len(trials)} trials ({definition.target_trials()} wanted)",
        )
    else:
        print(f"study {definition.study.name!r} has no trials yet")
    best = best_trial(trials)
    if best is None:
        print("no feasible trial has completed yet")
    else:
        print_records([trial_record(best)], "table", title="Best feasible trial")
    if len(definition.study.objectives) == 2:
        front = pareto_front(trials)
        if front:
            print_records(
                [trial_record(t) for t in front], "table", title="Pareto front (AP up, MACs down)"
            )
    spread = cost_ratio_spread(trials)
    if spread is not None:
        low, high = spread
        print(
            f"cost ratios of the feasible trials ({definition.constraint.kind}): {low:.3f} to "
            f"{high:.3f} ({high / low - 1:.1%} apart; band "
            f"{definition.constraint.band()[0]:.3f} to {definition.constraint.band()[1]:.3f})"
        )
    _print_region(find_region(trials, confirmations=confirmations), trials)
    if isinstance(packing, dict) and packing.get("reason"):
        print(f"packing of the last GPU run: {packing['reason']}")
    return 0


def _print_region(region: Region, trials: list[Any]) -> None:
    """The region's trials as a table, the range of α, β and γ it spans and the verdict line."""
    by_number = {t.number: t for t in trials}
    if region.members:
        rows = []
        for number in region.members:
            record = trial_record(by_number[number])
            p = region.p_values.get(number)
            rows.append(
                {
                    "trial": number,
                    "alpha": record["alpha"],
                    "beta": record["beta"],
                    "gamma": record["gamma"],
                    "AP mean": record["ap"],
                    "AP std": record["ap_std"],
                    "seeds": record["n_seeds"],
                    "p vs best": "best"
                    if number == region.best
                    else ("untestable" if p is None else f"{p:.3g}"),
                }
            )
        print_records(
            rows,
            "table",
            title=f"Region: not significantly worse than the best "
            f"at {region.level:.0%} ({len(rows)} trials)",
        )
        ranges = ", ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in region.ranges.items())
        print(f"region spans {ranges}")
    print(f"verdict: {region.advice}")
