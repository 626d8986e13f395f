"""Racing the best points: ``effscale confirm`` retrains the top trials of a study on more seeds,
so that the region (:func:`.trials.find_region`) compares them on more evidence.

The results are stored with the study, never over a trial: Optuna cannot change a finished
trial, so they go into the study user attr :data:`.trials.CONFIRM_ATTR` (trial number ->
``{"seeds": [...], "ap_per_seed": [...]}``), and :func:`.trials.seed_aps` adds them to the
trial's own seeds. A seed a trial already has is never trained or written again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from .data import prepare_data
from .definition import StudyDefinition
from .errors import ParameterError
from .objective import Objective
from .trials import (
    CONFIRM_ATTR,
    Region,
    find_region,
    load_study,
    scored_trials,
    seed_aps,
    study_confirmations,
    trial_point,
)

__all__ = ["ConfirmResult", "new_seeds", "confirm_study"]


@dataclass(frozen=True)
class ConfirmResult:
    """What :func:`confirm_study` did: the trials it retrained, the ``seeds`` it added, their
    APs per trial (fractions in [0, 1]) and the region after it."""

    trials: tuple[int, ...]
    seeds: tuple[int, ...]
    aps: dict[int, list[float]]
    region: Region


def new_seeds(used: set[int], count: int) -> tuple[int, ...]:
    """``count`` seeds not in ``used``, counting up from one past the largest used."""
    start = max(used, default=-1) + 1
    return tuple(range(start, start + count))


def confirm_study(
    definition: StudyDefinition,
    *,
    top_k: int,
    seeds: int,
    storage: str | None = None,
    device: str | None = None,
    objective: Callable[..., Objective] = Objective,
    log: Callable[[str], None] | None = None,
) -> ConfirmResult:
    """Retrain the ``top_k`` feasible trials of highest mean AP on ``seeds`` more seeds each
    (the same new seeds for all, so that they pair), store the APs with the study and return the
    region after it. ``device`` overrides ``[train] device``; ``objective`` makes the scorer
    (fault injection in tests); ``log`` receives a line per training."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ParameterError("top_k", f"must be an integer >= 1, got {top_k!r}", "e.g. 3")
    if not isinstance(seeds, int) or seeds < 1:
        raise ParameterError("seeds", f"must be an integer >= 1, got {seeds!r}", "e.g. 3")
    d = definition
    study = load_study(d, storage)
    trials = study.get_trials(deepcopy=False)
    confirmations = study_confirmations(study)
    scored = scored_trials(trials)
    if not scored:
        raise ParameterError(
            "study", "has no feasible COMPLETE trial to confirm", "run `effscale search` first"
        )
    means = {t.number: _mean(seed_aps(t, confirmations)) for t in scored}
    top = sorted(scored, key=lambda t: (-means[t.number], t.number))[:top_k]
    used = {s for t in scored for s in seed_aps(t, confirmations)} | set(d.study.seeds)
    added = new_seeds(used, seeds)
    data, num_classes = prepare_data(d)
    scorer = objective(
        d,
        num_classes=num_classes,
        data=data,
        device=device or d.train.device,
        quiet=True,
    )
    say = log or (lambda _line: None)
    results: dict[int, list[float]] = {}
    for rank, trial in enumerate(top, start=1):
        say(f"confirming trial #{trial.number} ({rank}/{len(top)}) on seeds {list(added)}")
        results[trial.number] = scorer.score_point(
            trial_point(trial), added, trial_number=trial.number
        )
    _store(study, results, added)
    after = study_confirmations(study)
    return ConfirmResult(
        trials=tuple(t.number for t in top),
        seeds=added,
        aps=results,
        region=find_region(study.get_trials(deepcopy=False), confirmations=after),
    )


def _mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values) if values else float("-inf")


def _store(study: optuna.Study, results: dict[int, list[float]], seeds: tuple[int, ...]) -> None:
    """Add the new seeds' APs to the study's confirmations; existing entries are kept."""
    stored: dict[str, Any] = dict(study.user_attrs.get(CONFIRM_ATTR) or {})
    for number, aps in results.items():
        entry = stored.get(str(number)) or {"seeds": [], "ap_per_seed": []}
        known = set(entry["seeds"])
        for seed, ap in zip(seeds, aps):
            if seed not in known:
                entry["seeds"].append(seed)
                entry["ap_per_seed"].append(ap)
        stored[str(number)] = entry
    study.set_user_attr(CONFIRM_ATTR, stored)
