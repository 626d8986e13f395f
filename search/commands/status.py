"""``effscale status STUDY.toml``: the trials of a study, its best feasible point and, with two
objectives, the Pareto front (AP up, MACs down)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from search.commands._output import add_format_argument, print_records

__all__ = ["register", "run", "load_study", "load_trials", "trial_record", "status_document"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``status`` command."""
    parser = subparsers.add_parser(
        "status",
        help="show the trials, best point and Pareto front of a study",
        description="Read the study of STUDY.toml from its storage (never creating it) and show "
                    "its trials, the best feasible trial and, for two objectives, the Pareto "
                    "front.",
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    add_format_argument(parser, choices=("table", "json"))
    parser.set_defaults(func=run)


def load_trials(definition: Any, storage: str | None = None) -> list[Any]:
    """All trials of the study of ``definition``, without creating its storage or study."""
    return load_study(definition, storage).get_trials(deepcopy=False)


def load_study(definition: Any, storage: str | None = None) -> Any:
    """The Optuna study of ``definition``, without creating its storage or study."""
    import optuna

    from search.storage import open_storage, resolve_storage_url

    location = resolve_storage_url(storage or definition.storage_url, base_dir=definition.folder)
    if location.path is not None and not location.path.is_file():
        raise FileNotFoundError(f"no study yet: {location.path} does not exist; run "
                                f"`effscale search {definition.path.name}` first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=definition.study.name,
                                 storage=open_storage(location))
    except KeyError:
        raise ValueError(f"study.name: no study {definition.study.name!r} in {location.url}; "
                         f"run `effscale search {definition.path.name}` first") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trial_record(trial: Any) -> dict[str, Any]:
    """A flat summary of one trial: number, state, coefficients, AP, cost and why it stopped."""
    from search.objective import trial_coordinates

    attrs = trial.user_attrs
    ap = trial.values[0] if trial.values else attrs.get("ap")
    macs = attrs.get("macs")
    return {
        "number": trial.number,
        "state": trial.state.name,
        **trial_coordinates(trial),
        "ap": _finite(ap),
        "cost_ratio": attrs.get("cost_ratio"),
        "feasible": attrs.get("feasible"),
        "gmacs": None if macs is None else macs / 1e9,
        "resolution": attrs.get("resolution"),
        "note": attrs.get("infeasible_reason") or attrs.get("skip_reason")
        or attrs.get("error") or "",
    }


def status_document(definition: Any, trials: list[Any], *,
                    packing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``--format json`` object: counts, ``best`` (alpha, beta, gamma, value, number or
    ``null``), ``pareto`` (trial numbers; two objectives only), every trial and, when given,
    ``packing`` (how the last GPU run packed trials: the study's ``packing`` user attr)."""
    from search.objective import trial_coordinates
    from search.runners.optuna_runner import best_trial, pareto_front

    count = lambda state: sum(1 for t in trials if t.state.name == state)  # noqa: E731
    best = best_trial(trials)
    document: dict[str, Any] = {
        "study": definition.study.name,
        "objectives": list(definition.study.objectives),
        "n_trials": definition.target_trials(),
        "n_complete": count("COMPLETE"),
        "n_pruned": count("PRUNED"),
        "n_failed": count("FAIL"),
        "n_running": count("RUNNING"),
        "best": None,
        "trials": [{
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "values": None if t.values is None else [_finite(v) for v in t.values],
            "constraints": t.constraints,
            "user_attrs": {k: _finite(v) for k, v in t.user_attrs.items()},
        } for t in trials],
    }
    if best is not None:
        c = trial_coordinates(best)
        document["best"] = {"alpha": c["alpha"], "beta": c["beta"], "gamma": c["gamma"],
                            "value": best.values[0], "number": best.number}
    if len(definition.study.objectives) == 2:
        document["pareto"] = [t.number for t in pareto_front(trials)]
    if packing is not None:
        document["packing"] = packing
    return document


def run(args: argparse.Namespace) -> int:
    """Print the study's status as tables or one JSON object; returns 0."""
    from search.runners.optuna_runner import best_trial, pareto_front
    from search.study_file import load_study_file

    definition = load_study_file(args.study)
    study = load_study(definition, args.storage)
    trials = study.get_trials(deepcopy=False)
    packing = study.user_attrs.get("packing")
    if args.format == "json":
        sys.stdout.write(json.dumps(status_document(definition, trials, packing=packing),
                                    indent=2) + "\n")
        return 0
    records = [trial_record(t) for t in trials]
    if records:
        print_records(records, "table", title=f"Study {definition.study.name!r}: "
                      f"{len(trials)} trials ({definition.target_trials()} wanted)")
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
            print_records([trial_record(t) for t in front], "table",
                          title="Pareto front (AP up, MACs down)")
    if isinstance(packing, dict) and packing.get("reason"):
        print(f"packing of the last GPU run: {packing['reason']}")
    return 0
