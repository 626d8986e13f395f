"""What a stored trial means, read in one place: its coordinates, feasibility, AP and cost; the
best trial, the Pareto front and the trial an export or validation uses; and the study itself,
loaded without ever creating it.

Every command that reads a study (status, report, export, validate, the dashboard, the plots and
the runners' progress line) asks this module, so that they agree.

User attrs a trial of ``effscale search`` carries (see :mod:`.objective`): the φ=1 model's
``cost_ratio`` (φ=1 over φ=0, dimensionless), ``feasible``, ``macs`` (multiply-adds per image),
``params``, ``activations`` and effective dimensions; ``ap`` and the other COCO metrics when it
trained; the coordinates that were derived (``gamma`` in solve mode) or fixed; and the reasons a
trial stopped (``infeasible_reason``, ``prune_reason``, ``fail_reason``, ``error``,
``skip_reason``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy import stats

from .definition import StudyDefinition
from .errors import ParameterError
from .output import shell_path
from .space import PARAM_NAMES, CandidatePoint
from .storage import check_storage_file, open_storage, resolve_storage_url

__all__ = [
    "mean_interval",
    "CONSTRAINT_NAME",
    "CONSTRAINTS_ATTR",
    "CONSTRAINT_NAMES_ATTR",
    "FINISHED",
    "ChosenTrial",
    "dashboard_constraints",
    "constraint_values",
    "is_feasible",
    "trial_ap",
    "trial_macs",
    "trial_coordinates",
    "trial_point",
    "trial_note",
    "trial_record",
    "scored_trials",
    "infeasible_trials",
    "best_trial",
    "top_trials",
    "cost_ratio_spread",
    "pareto_numbers",
    "pareto_front",
    "choose_trial",
    "open_existing_storage",
    "load_study",
    "load_trials",
    "count_states",
    "CONFIRM_ATTR",
    "VERDICTS",
    "Region",
    "seed_aps",
    "study_confirmations",
    "paired_p_value",
    "find_region",
]

#: the study user attr holding ``effscale confirm``'s extra seeds: trial number (a string) ->
#: ``{"seeds": [...], "ap_per_seed": [...]}`` (Optuna cannot change a finished trial)
CONFIRM_ATTR = "confirm"
#: what the region says about the answer
VERDICTS = ("resolved", "tied", "noise")

#: the key of the cost constraint given to ``Trial.set_constraint``
CONSTRAINT_NAME = "cost_ratio"
#: the trial system attr optuna-dashboard 0.21 reads constraints from (a JSON list of floats)
CONSTRAINTS_ATTR = "constraints"
#: the trial system attr holding the names of the ``"constraints"`` list's values
CONSTRAINT_NAMES_ATTR = "effscale:constraint_names"
#: the states of a trial that counts towards ``n_trials``
FINISHED = ("COMPLETE", "PRUNED")

_NAMED_PREFIX = CONSTRAINTS_ATTR + ":"


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ------------------------------------------------------------------------------- constraints


def dashboard_constraints(system_attrs: Mapping[str, Any]) -> list[float]:
    """A trial's constraint values as optuna-dashboard reads them (its ``"constraints"`` list;
    feasible when every value is ``<= 0``), from either storage format: the list itself, else the
    ``"constraints:<name>"`` values of ``Trial.set_constraint`` ordered by name. ``[]`` when the
    trial has no constraint."""
    listed = system_attrs.get(CONSTRAINTS_ATTR)
    if listed is not None:
        return [float(v) for v in listed]
    named = sorted(
        (k[len(_NAMED_PREFIX) :], v) for k, v in system_attrs.items() if k.startswith(_NAMED_PREFIX)
    )
    return [float(v) for _, v in named]


def _system_attrs(trial: Any) -> Mapping[str, Any]:
    """System attrs of a FrozenTrial, or of a running Trial (which has no such property)."""
    attrs = getattr(trial, "system_attrs", None)
    if attrs is None:
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    return attrs  # type: ignore[no-any-return]


def constraint_values(trial: Any) -> dict[str, float]:
    """A finished or running trial's constraints by name, whichever way they were stored (the
    dashboard's list with its names, or ``Trial.set_constraint``); ``{}`` when it has none."""
    attrs = _system_attrs(trial)
    listed = attrs.get(CONSTRAINTS_ATTR)
    names = attrs.get(CONSTRAINT_NAMES_ATTR)
    if listed is not None and names is not None and len(names) == len(listed):
        return {str(n): float(v) for n, v in zip(names, listed)}
    if listed is not None:
        return {str(i): float(v) for i, v in enumerate(listed)}
    return {
        k[len(_NAMED_PREFIX) :]: float(v) for k, v in attrs.items() if k.startswith(_NAMED_PREFIX)
    }


def is_feasible(trial: Any) -> bool:
    """Whether a trial met the cost constraint: every constraint value is ``<= 0``; a trial
    without constraint values is feasible unless marked ``feasible = False``."""
    values = constraint_values(trial)
    if values:
        return all(v <= 0 for v in values.values())
    return trial.user_attrs.get("feasible") is not False


# ------------------------------------------------------------------------------- one trial


def trial_ap(trial: Any) -> float | None:
    """The trial's AP (its first objective value, else its ``ap`` user attr) when finite."""
    if trial.values:
        return _finite(trial.values[0])
    return _finite(trial.user_attrs.get("ap"))


def trial_macs(trial: Any) -> float | None:
    """Multiply-adds per image of the trial's φ=1 model (its ``macs`` user attr) when known."""
    macs = _finite(trial.user_attrs.get("macs"))
    if macs is None and trial.values and len(trial.values) > 1:
        macs = _finite(trial.values[1])
    return macs


def trial_coordinates(trial: Any) -> dict[str, Any]:
    """A trial's ``alpha``, ``beta``, ``gamma``, ``width_growth``, ``depth_step`` and
    ``fusion``, whether sampled (params), derived or fixed (user attrs); ``None`` if unknown."""
    return {name: trial.params.get(name, trial.user_attrs.get(name)) for name in PARAM_NAMES}


def trial_point(trial: Any) -> CandidatePoint:
    """A finished trial's coordinates as a :class:`~.space.CandidatePoint`; a one-line
    :class:`.ParameterError` naming ``trial`` when one is unrecorded."""
    coords = trial_coordinates(trial)
    missing = [name for name, value in coords.items() if value is None]
    if missing:
        raise ParameterError(
            "trial",
            f"trial {trial.number} records no {missing[0]} (neither a param nor a user attr)",
            "it was not made by effscale search; name another trial",
        )
    return CandidatePoint(**coords)


def trial_note(trial: Any) -> str:
    """Why the trial stopped, in one line ("" when it completed without remark)."""
    attrs = trial.user_attrs
    note = attrs.get("infeasible_reason") or attrs.get("skip_reason") or attrs.get("error") or ""
    return " ".join(str(note).split())


def trial_record(trial: Any) -> dict[str, Any]:
    """A flat summary of one trial: number, state, coordinates, AP (the mean over its seeds),
    its standard deviation and seed count, cost ratio, feasibility, GMACs (1e9 multiply-adds per
    image of the φ=1 model), resolution (pixels), the training's warnings (``flag``: too few
    steps, AP not above an untrained model's) and a note."""
    attrs = trial.user_attrs
    macs = trial_macs(trial)
    warnings = attrs.get("warnings") or []
    return {
        "number": trial.number,
        "state": trial.state.name,
        **trial_coordinates(trial),
        "ap": trial_ap(trial),
        "ap_std": _finite(attrs.get("ap_std")),
        "n_seeds": attrs.get("n_seeds"),
        "cost_ratio": attrs.get("cost_ratio"),
        "feasible": attrs.get("feasible"),
        "gmacs": None if macs is None else macs / 1e9,
        "resolution": attrs.get("resolution"),
        "flag": "; ".join(str(w) for w in warnings),
        "note": trial_note(trial),
    }


# ------------------------------------------------------------------------------- many trials


def scored_trials(trials: Sequence[Any]) -> list[Any]:
    """Feasible COMPLETE trials with a finite AP, by number."""
    return sorted(
        (
            t
            for t in trials
            if t.state.name == "COMPLETE" and is_feasible(t) and trial_ap(t) is not None
        ),
        key=lambda t: t.number,
    )


def infeasible_trials(trials: Sequence[Any]) -> list[Any]:
    """Finished trials that missed the cost constraint (never scored), by number."""
    return sorted(
        (t for t in trials if t.state.name in FINISHED and not is_feasible(t)),
        key=lambda t: t.number,
    )


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The feasible COMPLETE trial with the highest AP (ties: the lower number), or ``None``."""
    return max(scored_trials(trials), key=lambda t: (trial_ap(t), -t.number), default=None)


def top_trials(trials: Sequence[Any], k: int) -> list[Any]:
    """The ``k`` feasible COMPLETE trials with the highest AP (ties: lower number first)."""
    return sorted(scored_trials(trials), key=lambda t: (-(trial_ap(t) or 0.0), t.number))[:k]


def cost_ratio_spread(trials: Sequence[Any]) -> tuple[float, float] | None:
    """The lowest and highest cost ratio (φ=1 over φ=0, measured or formula as the study
    gated) of the feasible COMPLETE trials, or ``None`` when there is none."""
    ratios = [r for t in scored_trials(trials) if (r := _finite(t.user_attrs.get("cost_ratio")))]
    return (min(ratios), max(ratios)) if ratios else None


def pareto_numbers(points: Sequence[tuple[int, float, float]]) -> tuple[int, ...]:
    """Numbers of the (number, cost, AP) points not dominated in (min cost, max AP), sorted."""
    front = []
    for number, cost, ap in points:
        dominated = any(
            c <= cost and a >= ap and (c < cost or a > ap) for n, c, a in points if n != number
        )
        if not dominated:
            front.append(number)
    return tuple(sorted(front))


def pareto_front(trials: Sequence[Any]) -> list[Any]:
    """Feasible COMPLETE trials not dominated in (max AP, min MACs of the φ=1 model), by number."""
    scored = [t for t in scored_trials(trials) if trial_macs(t) is not None]
    front = set(pareto_numbers([(t.number, trial_macs(t), trial_ap(t)) for t in scored]))  # type: ignore[misc]
    return [t for t in scored if t.number in front]


# ------------------------------------------------------------------------------- the chosen


@dataclass(frozen=True)
class ChosenTrial:
    """The trial an export or validation uses: its ``number``, coordinates (``point``), AP at
    φ=1, the φ=1 model's MACs (multiply-adds per image; ``None`` if not recorded), how it was
    chosen (``"best"``, ``"pareto-best"`` or ``"named"``) and the Pareto front's trial numbers
    (two objectives only, else empty)."""

    number: int
    point: CandidatePoint
    ap: float
    macs: int | None
    selection: str
    pareto: tuple[int, ...] = ()


def choose_trial(
    trials: Sequence[Any],
    *,
    objectives: Sequence[str],
    number: int | None = None,
    study_name: str = "the study",
) -> ChosenTrial:
    """Pick the trial to export or validate from a study's ``trials`` (``FrozenTrial`` objects).

    ``number`` ``None``: the feasible COMPLETE trial with the highest AP (for two objectives,
    the highest-AP trial of the Pareto front). A named trial must exist, be COMPLETE and
    feasible, and with two objectives lie on the Pareto front. Raises a one-line
    :class:`.ParameterError` naming ``trial``.
    """
    two = len(objectives) == 2
    front = tuple(t.number for t in pareto_front(trials)) if two else ()
    if number is None:
        candidates = [t for t in trials if t.number in front] if two else scored_trials(trials)
        chosen = max(candidates, key=lambda t: (trial_ap(t), -t.number), default=None)
        if chosen is None:
            finished = sum(1 for t in trials if t.state.name in FINISHED)
            raise ParameterError(
                "trial",
                f"{study_name} has no feasible COMPLETE trial yet ({len(trials)} trials, "
                f"{finished} finished)",
                "run effscale search until one completes, or give the coefficients",
            )
        selection = "pareto-best" if two else "best"
    else:
        by_number = {t.number: t for t in trials}
        if number not in by_number:
            span = f"trials 0-{max(by_number)}" if by_number else "no trials"
            raise ParameterError(
                "trial",
                f"{study_name} has no trial {number} ({span})",
                "pick one from effscale status, or leave it unset for the best",
            )
        chosen = by_number[number]
        if chosen.state.name in FINISHED and not is_feasible(chosen):
            reason = chosen.user_attrs.get("infeasible_reason")
            ratio = chosen.user_attrs.get("cost_ratio")
            detail = (
                f" ({' '.join(str(reason).split())})"
                if reason
                else f" (cost ratio {ratio:.4f})"
                if isinstance(ratio, (int, float))
                else ""
            )
            raise ParameterError(
                "trial",
                f"trial {number} is infeasible{detail}: it misses the cost band and was never "
                "trained",
                "choose a feasible trial, or leave it unset for the best",
            )
        if chosen.state.name != "COMPLETE":
            why = trial_note(chosen)
            raise ParameterError(
                "trial",
                f"trial {number} is {chosen.state.name}, not COMPLETE{f' ({why})' if why else ''}",
                "choose a COMPLETE trial, or leave it unset for the best",
            )
        if two and number not in front:
            raise ParameterError(
                "trial",
                f"trial {number} is not on the Pareto front (trials "
                f"{', '.join(map(str, front)) or 'none'})",
                "name one of those",
            )
        selection = "named"
    ap = trial_ap(chosen)
    macs = trial_macs(chosen)
    return ChosenTrial(
        number=chosen.number,
        point=trial_point(chosen),
        ap=math.nan if ap is None else ap,
        macs=None if macs is None else int(macs),
        selection=selection,
        pareto=front,
    )


# ------------------------------------------------------------------------------- the study


def open_existing_storage(definition: StudyDefinition, *, storage: str | None = None) -> Any:
    """The Optuna storage object of ``definition``'s study (``storage`` overrides ``[study]
    storage``), refusing a storage file that does not exist yet rather than creating it."""
    location = resolve_storage_url(storage or definition.storage_url, base_dir=definition.folder)
    check_storage_file(location)  # a folder, or a file of another kind, is not "no study yet"
    if location.path is not None and not location.path.is_file():
        raise FileNotFoundError(
            f"no study yet: {location.path} does not exist; run `effscale search "
            f"{shell_path(definition.path)}` first"
        )
    return open_storage(location)


def load_study(definition: StudyDefinition, storage: str | None = None) -> optuna.Study:
    """The Optuna study of ``definition`` (``storage`` overrides ``[study] storage``), never
    creating its storage or the study; a one-line error naming ``effscale search`` otherwise."""
    storage_object = open_existing_storage(definition, storage=storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=definition.study.name, storage=storage_object)
    except KeyError:
        raise ParameterError(
            "study.name",
            f"no study {definition.study.name!r} in {storage or definition.storage_url}",
            f"run `effscale search {shell_path(definition.path)}` first",
        ) from None


def load_trials(
    definition: StudyDefinition, storage: str | None = None
) -> list[optuna.trial.FrozenTrial]:
    """All trials of the study of ``definition``, without creating its storage or study."""
    return load_study(definition, storage).get_trials(deepcopy=False)


def count_states(trials: Sequence[Any]) -> dict[str, int]:
    """The number of trials in each state (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``,
    ``WAITING``), zeros included."""
    return {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}


# ------------------------------------------------------------------------------- the region


def study_confirmations(study: optuna.Study) -> dict[int, dict[str, list[Any]]]:
    """``effscale confirm``'s results stored with ``study``: trial number -> ``{"seeds": [...],
    "ap_per_seed": [...]}`` (empty when the study was never confirmed)."""
    stored = study.user_attrs.get(CONFIRM_ATTR) or {}
    return {int(number): dict(entry) for number, entry in stored.items()}


def seed_aps(
    trial: Any, confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None
) -> dict[int, float]:
    """The trial's AP per training seed: its ``seeds``/``ap_per_seed`` user attrs, with the
    seeds ``effscale confirm`` added (``confirmations``). A trial stored without per-seed attrs
    counts as one seed, 0."""
    seeds = trial.user_attrs.get("seeds")
    aps = trial.user_attrs.get("ap_per_seed")
    found: dict[int, float] = {}
    if isinstance(seeds, list) and isinstance(aps, list) and len(seeds) == len(aps):
        found = {int(s): float(a) for s, a in zip(seeds, aps) if _finite(a) is not None}
    else:
        ap = trial_ap(trial)
        if ap is not None:
            found = {0: ap}
    extra = (confirmations or {}).get(trial.number)
    if extra:
        for s, a in zip(extra.get("seeds", []), extra.get("ap_per_seed", [])):
            if _finite(a) is not None and int(s) not in found:
                found[int(s)] = float(a)
    return found


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (APs over seeds, fractions in
    [0, 1]): Student's t (``scipy.stats.t.interval``) with the standard error of the mean;
    ``None`` below two values. Values that are all equal give the point itself."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    sem = float(stats.sem(values))
    if not sem > 0:
        return (mean, mean)
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def paired_p_value(better: Mapping[int, float], other: Mapping[int, float]) -> float | None:
    """One-sided p-value that ``better``'s AP exceeds ``other``'s, paired on their shared seeds
    (``scipy.stats.ttest_rel``, ``alternative="greater"``); ``None`` with fewer than two shared
    seeds. Differences that are all equal (no noise; to 1e-9 relative) give 0 when positive,
    else 1."""
    shared = sorted(set(better) & set(other))
    if len(shared) < 2:
        return None
    diffs = [better[s] - other[s] for s in shared]
    if math.isclose(max(diffs), min(diffs), rel_tol=1e-9, abs_tol=1e-12):
        return 0.0 if diffs[0] > 1e-12 else 1.0
    result = stats.ttest_rel(
        [better[s] for s in shared], [other[s] for s in shared], alternative="greater"
    )
    p = float(result.pvalue)
    return p if math.isfinite(p) else None


@dataclass(frozen=True)
class Region:
    """The answer of a study with its noise: the feasible trials not significantly worse than
    the best at ``level`` (paired on shared seeds), the range of α, β and γ they span, and the
    verdict.

    ``best``: the trial with the highest mean AP; ``members``: the region's trial numbers, the
    best first; ``ranges``: ``{"alpha": (lo, hi), "beta": ..., "gamma": ...}`` over the members;
    ``verdict``: ``"resolved"`` (every other trial is significantly worse), ``"tied"`` (the best
    beats the median trial but ties with others) or ``"noise"`` (the best is not significantly
    better than the median trial); ``advice``: one line saying so and what to raise;
    ``p_values``: each scored trial's one-sided p-value against the best (``None``: untestable);
    ``seeds``: the fewest seeds of a scored trial."""

    best: int | None
    members: tuple[int, ...]
    ranges: dict[str, tuple[float, float]]
    verdict: str
    advice: str
    p_values: dict[int, float | None] = field(default_factory=dict)
    seeds: int = 0
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``region``, ``region_ranges``, ``verdict`` and ``advice``."""
        return {
            "region": list(self.members),
            "region_ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()},
            "verdict": self.verdict,
            "advice": self.advice,
        }


def _ranges(trials: Sequence[Any]) -> dict[str, tuple[float, float]]:
    ranges = {}
    for name in ("alpha", "beta", "gamma"):
        values = [v for t in trials if (v := _finite(trial_coordinates(t)[name])) is not None]
        if values:
            ranges[name] = (min(values), max(values))
    return ranges


def find_region(
    trials: Sequence[Any],
    *,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
    level: float = 0.95,
) -> Region:
    """The region of ``trials`` (see :class:`Region`): each feasible COMPLETE trial is compared
    with the one of highest mean AP by a one-sided paired t-test on their shared seeds
    (:func:`paired_p_value`); it stays in the region unless p < ``1 - level``."""
    scored = scored_trials(trials)
    if not scored:
        return Region(None, (), {}, "noise", "noise: no feasible trial has completed yet")
    aps = {t.number: seed_aps(t, confirmations) for t in scored}
    means = {n: statistics.fmean(v.values()) for n, v in aps.items() if v}
    best = max(scored, key=lambda t: (means.get(t.number, -math.inf), -t.number))
    p_values = {
        t.number: paired_p_value(aps[best.number], aps[t.number])
        for t in scored
        if t.number != best.number
    }
    alpha = 1.0 - level
    members = [best] + [
        t
        for t in scored
        if t.number != best.number and not ((p := p_values[t.number]) is not None and p < alpha)
    ]
    seeds = min(len(v) for v in aps.values())
    ranked = sorted(scored, key=lambda t: (means.get(t.number, -math.inf), -t.number))
    median = ranked[(len(ranked) - 1) // 2]
    p_median = None if median is best else p_values[median.number]
    head = f"#{best.number} (AP {means[best.number]:.4f} over {len(aps[best.number])} seeds)"
    if len(scored) < 2 or p_median is None or p_median >= alpha:
        verdict = "noise"
        why = (
            "one seed per point gives no error bars; set [study] seeds = [0, 1, 2]"
            if seeds < 2
            else f"raise [train] steps, the data or [study] seeds (now {seeds})"
        )
        shown = "untestable" if p_median is None else f"p = {p_median:.3g}"
        advice = (
            f"noise: the best, {head}, is not significantly better than the median trial "
            f"({shown}); {why}"
        )
    elif len(members) == 1:
        verdict = "resolved"
        advice = (
            f"resolved: every other feasible trial is significantly worse than {head} at "
            f"{level:.0%} (paired t-test on shared seeds)"
        )
    else:
        verdict = "tied"
        advice = (
            f"tied: {len(members)} trials are not significantly worse than {head} at "
            f"{level:.0%} (paired t-test on shared seeds); the answer is their range, not a "
            "point; more seeds (effscale confirm) narrow it"
        )
    return Region(
        best=best.number,
        members=tuple(t.number for t in members),
        ranges=_ranges(members),
        verdict=verdict,
        advice=advice,
        p_values=p_values,
        seeds=seeds,
        level=level,
    )
