"""Scaling validation: do the found coefficients beat other ways of spending the same MACs, and
does the φ=1 proxy rank candidates the way a larger model does?

Matched-MACs comparison (the analogue of EfficientNet's Figure 8)
-----------------------------------------------------------------
At a larger φ (default 2) the search's proxy (its φ=0 model, :func:`search.objective.
proxy_dimensions`) is scaled five ways and each is trained with the study's ``[train]`` and
``[data]`` (:func:`effscale.detector.train.train_proxy`, the same seed for all):

* ``found``: the chosen trial's coefficients at φ (:func:`effscale.search.family.family_spec`); its
  MACs per image are the target of every other method.
* ``paper``: the EfficientDet paper's constants (alpha 1.2, beta 1.1, gamma 1.15, BiFPN width
  ×1.35 and +1 cell per φ) at the fractional φ' whose MACs match the target.
* ``width``: every width (backbone channels and BiFPN channels) scaled by ``beta**phi``,
  with depth and resolution at the proxy's; ``beta`` solved.
* ``depth``: backbone repeats by ``alpha**phi`` and BiFPN cells by ``D0 * alpha**phi`` (ceil),
  widths and resolution at the proxy's; ``alpha`` solved. Head depth stays at the proxy's
  (its rule is a step every 3 φ, which the found and paper models do not reach below φ = 3).
* ``resolution``: input side ``R0 * gamma**phi`` (multiple of 8), the rest at the proxy's;
  ``gamma`` solved.

Each solved coefficient comes from bisection on measured MACs (:func:`detector.complexity.
count_complexity`); MACs are monotone in every coefficient but piecewise constant (channels round
to 8, repeats up, sides to 32), so the closest legal value may miss ±5% (``matched`` is then
false; it is still trained and reported).

Proxy-rank fidelity
-------------------
The top-k feasible COMPLETE trials by AP at φ=1 are retrained at φ; the Spearman rank correlation
(``scipy.stats.spearmanr``) between their search AP and their AP at φ measures how far the proxy's
ranking carries over. With fewer than 2 trials, or constant APs, it is undefined (``None``).

Outputs (atomically, see :func:`effscale.search.output.atomic_directory`): ``validation.csv``,
``validation.md``, ``validation.png``, ``fidelity.csv`` and ``validation.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats
from scipy.stats import spearmanr

from effscale.detector.complexity import COUNTING_CONVENTION, count_complexity
from effscale.detector.config import DetectorConfig, from_scaling
from effscale.detector.scaling import ScalingSpec
from effscale.detector.train import DivergedError, resolve_device, train_proxy

from .data import prepare_data
from .definition import BaseSection, StudyDefinition
from .errors import ParameterError
from .family import PAPER_POINT, family_spec, proxy_dimensions
from .markdown import markdown_table
from .objective import train_inputs
from .output import atomic_directory, check_output_dir, path_name
from .plots import plot_validation
from .space import CandidatePoint
from .storage import resolve_storage_url
from .trials import choose_trial, load_trials, mean_interval, top_trials, trial_ap, trial_point
from .version import effscale_version

__all__ = [
    "METHODS",
    "MATCH_TOLERANCE",
    "ScaledVariant",
    "TrainedModel",
    "ValidationResult",
    "paper_point",
    "method_builder",
    "solve_coefficient",
    "matched_variants",
    "spearman",
    "seed_statistics",
    "paired_difference",
    "validate_study",
]

METHODS = ("found", "paper", "width", "depth", "resolution")
#: relative MACs distance from the found model's within which a variant counts as matched
MATCH_TOLERANCE = 0.05
#: the coefficient each method solves for (``found`` solves nothing; ``paper`` solves φ')
_COEFFICIENT = {
    "found": "",
    "paper": "phi",
    "width": "beta",
    "depth": "alpha",
    "resolution": "gamma",
}
#: a head-depth period no φ reaches: the head keeps the proxy's depth
_FIXED_PERIOD = 1e9


@dataclass(frozen=True)
class ScaledVariant:
    """One way of scaling the proxy: the ``method``, the solved ``coefficient`` name and its
    ``value`` (``phi`` for ``paper``; empty for ``found``), the ``config``, its ``macs`` and the
    ``target_macs`` (the found model's), both multiply-adds per image."""

    method: str
    coefficient: str
    value: float
    config: DetectorConfig
    macs: int
    target_macs: int

    @property
    def ratio(self) -> float:
        """MACs over the target (dimensionless)."""
        return self.macs / self.target_macs

    @property
    def matched(self) -> bool:
        """Whether the MACs lie within ±:data:`MATCH_TOLERANCE` of the target."""
        return abs(self.ratio - 1.0) <= MATCH_TOLERANCE + 1e-12


def paper_point(fusion: str = "fastattn") -> CandidatePoint:
    """The EfficientDet paper's point (alpha 1.2, beta 1.1, gamma 1.15, BiFPN ×1.35, +1 cell)
    with ``fusion``."""
    return replace(PAPER_POINT, fusion=fusion)


def _single_axis_spec(
    base: BaseSection,
    phi: float,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    bifpn_depth_factor: float = 1.0,
    fusion: str,
) -> ScalingSpec:
    d0 = proxy_dimensions(base)
    depth_step = d0.bifpn_repeats * (bifpn_depth_factor - 1.0) / phi if phi else 0.0
    point = CandidatePoint(
        alpha=alpha, beta=beta, gamma=gamma, width_growth=beta, depth_step=depth_step, fusion=fusion
    )
    spec = family_spec(base, point)
    return replace(spec, bifpn=replace(spec.bifpn, head_depth_period=_FIXED_PERIOD))


def method_builder(
    base: BaseSection, method: str, phi: float, *, found: CandidatePoint, num_classes: int
) -> Callable[[float], DetectorConfig]:
    """``value -> config`` of ``method`` at ``phi`` over the proxy of ``base``: the value is the
    solved coefficient (φ' for ``paper``; ignored for ``found``). Raises ``ValueError`` for a
    value that gives an illegal detector."""
    if method not in METHODS:
        raise ParameterError(
            "methods", f"unknown method {method!r}; choose from {', '.join(METHODS)}"
        )
    name = f"{method}-phi{phi:g}"

    def build(value: float) -> DetectorConfig:
        fusion = found.fusion
        if method == "found":
            spec, at = family_spec(base, found), phi
        elif method == "paper":
            spec, at = family_spec(base, paper_point(fusion)), value
        elif method == "width":
            spec, at = _single_axis_spec(base, phi, beta=value, fusion=fusion), phi
        elif method == "depth":
            spec, at = (
                _single_axis_spec(
                    base, phi, alpha=value, bifpn_depth_factor=value**phi, fusion=fusion
                ),
                phi,
            )
        else:
            spec, at = _single_axis_spec(base, phi, gamma=value, fusion=fusion), phi
        return from_scaling(spec, at, num_classes=num_classes, fusion=fusion, name=name)

    return build


def solve_coefficient(
    build: Callable[[float], DetectorConfig],
    low: float,
    high: float,
    target_macs: int,
    *,
    iterations: int = 60,
) -> tuple[float, DetectorConfig]:
    """The value in ``[low, high]`` whose config's MACs are closest to ``target_macs`` (in log
    ratio), by bisection on measured MACs, which must be nondecreasing in the value. Values that
    give illegal detectors count as too large."""

    def macs(value: float) -> float:
        try:
            return float(count_complexity(build(value)).macs)
        except ValueError:
            return math.inf

    if macs(low) >= target_macs:
        return low, build(low)
    if macs(high) < target_macs:
        return high, build(high)
    lo, hi = low, high
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if macs(mid) >= target_macs:
            hi = mid
        else:
            lo = mid
    best = min(
        (v for v in (lo, hi) if math.isfinite(macs(v))),
        key=lambda v: abs(math.log(macs(v) / target_macs)),
    )
    return best, build(best)


#: search interval of each solved coefficient (φ' for paper; coefficients are bounded by 4)
_BOUNDS = {"paper": (0.0, 12.0), "width": (1.0, 4.0), "depth": (1.0, 4.0), "resolution": (1.0, 4.0)}


def matched_variants(
    base: BaseSection,
    found: CandidatePoint,
    phi: float,
    *,
    num_classes: int,
    methods: Sequence[str] = METHODS,
) -> list[ScaledVariant]:
    """The proxy of ``base`` scaled by each method at ``phi``, the non-found ones solved to the
    found model's MACs (see the module docstring). ``found`` is always computed first."""
    builders = {
        m: method_builder(base, m, phi, found=found, num_classes=num_classes)
        for m in dict.fromkeys(("found", *methods))
    }
    target_config = builders["found"](phi)
    target = count_complexity(target_config).macs
    variants = []
    for method, build in builders.items():
        if method not in methods:
            continue
        if method == "found":
            value, config = phi, target_config
        else:
            value, config = solve_coefficient(build, *_BOUNDS[method], target)
        variants.append(
            ScaledVariant(
                method=method,
                coefficient=_COEFFICIENT[method],
                value=float(value),
                config=config,
                macs=count_complexity(config).macs,
                target_macs=target,
            )
        )
    return variants


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its p-value (``scipy.stats.spearmanr``); ``(None, None)`` when
    undefined (fewer than 2 pairs, or a constant side)."""
    pairs = [
        (a, b)
        for a, b in zip(x, y)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    if len(pairs) < 2 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None, None
    result = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    rho, p = float(result.statistic), float(result.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


@dataclass(frozen=True)
class TrainedModel:
    """A training at φ: ``ap`` (and the other COCO metrics) in [0, 1], ``None`` when the run
    failed with ``error`` (e.g. divergence); wall ``seconds`` of the run."""

    metrics: dict[str, float | None]
    seconds: float
    error: str | None = None

    @property
    def ap(self) -> float | None:
        """COCO AP, or ``None``."""
        return self.metrics.get("ap")


@dataclass(frozen=True)
class ValidationResult:
    """What :func:`validate_study` measured and wrote: the ``rows`` of the matched comparison,
    the ``fidelity`` rows, Spearman ``rho`` and ``p_value``, and the ``out`` folder."""

    out: Path
    phi: float
    trial: int
    rows: list[dict[str, Any]] = field(repr=False)
    fidelity: list[dict[str, Any]] = field(repr=False)
    rho: float | None
    p_value: float | None
    summary: dict[str, Any] = field(repr=False)


def _key(config: DetectorConfig) -> DetectorConfig:
    return config.replace(name="model")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _train(config: DetectorConfig, *, data: Any, settings: Any, device: str) -> TrainedModel:
    try:
        result = train_proxy(config, data=data, settings=settings, device=device, quiet=True)
    except DivergedError as exc:
        return TrainedModel(metrics={"ap": None}, seconds=0.0, error=" ".join(str(exc).split()))
    return TrainedModel(
        metrics={k: _finite(float(v)) for k, v in result.metrics.items()},
        seconds=float(result.seconds),
    )


def seed_statistics(aps: Mapping[int, float], *, level: float = 0.95) -> dict[str, Any]:
    """Per-seed APs (fractions in [0, 1]) summarized: ``seeds``, ``ap_per_seed``, ``ap`` (the
    mean), ``ap_std``, and the ``level`` confidence interval of the mean (``ap_ci_low``,
    ``ap_ci_high``: Student's t, ``scipy.stats.t.interval``; ``None`` below two seeds)."""
    seeds = sorted(aps)
    values = [aps[s] for s in seeds]
    summary: dict[str, Any] = {
        "seeds": seeds,
        "ap_per_seed": values,
        "ap": statistics.fmean(values) if values else None,
        "ap_std": statistics.stdev(values) if len(values) > 1 else None,
        "ap_ci_low": None,
        "ap_ci_high": None,
    }
    interval = mean_interval(values, level=level)
    if interval is not None:
        summary.update(ap_ci_low=interval[0], ap_ci_high=interval[1])
    return summary


def paired_difference(
    aps: Mapping[int, float], reference: Mapping[int, float], *, level: float = 0.95
) -> dict[str, Any]:
    """``aps`` minus ``reference`` (AP, fractions) on their shared seeds: the mean difference
    (``diff_to_found``), its ``level`` confidence interval and the two-sided p-value of a paired
    t-test (``scipy.stats.ttest_rel``); ``None`` where fewer than two seeds are shared."""
    shared = sorted(set(aps) & set(reference))
    out: dict[str, Any] = {
        "diff_to_found": None,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "diff_p_value": None,
    }
    if not shared:
        return out
    diffs = [aps[s] - reference[s] for s in shared]
    out["diff_to_found"] = statistics.fmean(diffs)
    if len(shared) < 2:
        return out
    if max(diffs) == min(diffs):  # no noise between the pairs
        out.update(
            diff_ci_low=diffs[0], diff_ci_high=diffs[0], diff_p_value=1.0 if diffs[0] == 0 else 0.0
        )
        return out
    test = stats.ttest_rel([aps[s] for s in shared], [reference[s] for s in shared])
    interval = test.confidence_interval(level)
    out.update(
        diff_ci_low=float(interval.low),
        diff_ci_high=float(interval.high),
        diff_p_value=float(test.pvalue),
    )
    return out


def _mean_metric(runs: Sequence[TrainedModel], name: str) -> float | None:
    values = [v for r in runs if (v := r.metrics.get(name)) is not None]
    return statistics.fmean(values) if values else None


def _describe(config: DetectorConfig) -> dict[str, Any]:
    cost = count_complexity(config)
    return {
        "image_size": f"{config.image_size[0]}x{config.image_size[1]}",
        "backbone_width": config.backbone.width_multiplier,
        "backbone_depth": config.backbone.depth_multiplier,
        "bifpn_width": config.fpn.channels,
        "bifpn_depth": config.fpn.repeats,
        "head_depth": config.head.repeats,
        "params": cost.params,
        "gmacs": round(cost.macs / 1e9, 6),
    }


def validate_study(
    definition: StudyDefinition,
    *,
    phi: float = 2.0,
    top_k: int = 5,
    trial: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    storage: str | None = None,
    device: str | None = None,
    methods: Sequence[str] = METHODS,
    budget: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Run the matched-MACs comparison and the proxy-rank fidelity check of a finished study.

    ``trial`` picks the found trial (default: the best, as in :func:`.trials.choose_trial`);
    ``top_k`` trials are retrained for the fidelity (0 skips it); ``device`` overrides
    ``[train] device``; ``budget`` (``{"steps": 20}`` or ``{"epochs": 2}``; a wall-clock budget
    is refused: it depends on load) overrides the training budget; ``seeds`` (default: the
    study's ``[study] seeds``) are the training seeds every method and trial is trained with, so
    that each method's AP is a mean with a 95% CI and its difference to the found coefficients is
    paired; ``log`` receives one line per training. ``out`` defaults to ``<study folder>/<study
    name>-validate-phi<φ>``.
    """
    d = definition
    seed_list = tuple(d.study.seeds if seeds is None else seeds)
    if (
        not seed_list
        or len(set(seed_list)) != len(seed_list)
        or not all(isinstance(s, int) and s >= 0 for s in seed_list)
    ):
        raise ParameterError(
            "seeds", f"must be distinct integers >= 0, got {list(seed_list)!r}", "e.g. 0,1,2"
        )
    if budget and "seconds" in budget:
        raise ParameterError(
            "seconds",
            "a wall-clock budget depends on the machine's load, so the methods would not get "
            "equal training",
            "give steps or epochs",
        )
    if not (isinstance(phi, (int, float)) and math.isfinite(phi) and 1 < phi <= 8):
        raise ParameterError(
            "phi", f"must be in (1, 8] (the search trained φ = 1 models), got {phi}"
        )
    if not isinstance(top_k, int) or top_k < 0:
        raise ParameterError("top_k", f"must be an integer >= 0, got {top_k!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        problem = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise ParameterError("methods", f"{problem}; choose from {', '.join(METHODS)}")
    if d.data is None:
        raise ValueError(
            f"data: {d.path.name} has no [data] section, and validate trains "
            "models; add [data] (and a [train] budget) to the study file"
        )
    if out is None:
        out = d.folder / f"{path_name(d.study.name)}-validate-phi{phi:g}"
    check_output_dir(out, command="validate", study=d, overwrite=overwrite)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    trials = load_trials(d, storage)
    chosen = choose_trial(
        trials, objectives=d.study.objectives, number=trial, study_name=f"study {d.study.name!r}"
    )
    data, num_classes = prepare_data(d)
    assert data is not None  # checked above: the study has a [data] section
    data_settings, settings = train_inputs(d, data)
    if budget:
        settings = replace(settings, epochs=None, steps=None, seconds=None, **budget)
    torch_device = str(resolve_device(device or d.train.device))
    variants = matched_variants(d.base, chosen.point, phi, num_classes=num_classes, methods=methods)
    ranked = []
    for t in top_trials(trials, top_k):
        point = trial_point(t)
        ranked.append(
            (
                t,
                from_scaling(
                    family_spec(d.base, point),
                    phi,
                    num_classes=num_classes,
                    fusion=point.fusion,
                    name=f"trial{t.number}-phi{phi:g}",
                ),
            )
        )

    say = log or (lambda _line: None)
    cache: dict[tuple[DetectorConfig, int], TrainedModel] = {}
    configs = {_key(v.config) for v in variants} | {_key(c) for _, c in ranked}
    total = len(configs) * len(seed_list)

    def trained(config: DetectorConfig, label: str) -> list[TrainedModel]:
        """The trainings of ``config``, one per seed (each trained once)."""
        runs = []
        for seed in seed_list:
            key = (_key(config), seed)
            if key not in cache:
                say(
                    f"training {label}, seed {seed} ({len(cache) + 1}/{total}): "
                    f"{config.image_size[0]} px, {count_complexity(config).macs / 1e9:.4f} GMACs"
                )
                cache[key] = _train(
                    config,
                    data=data_settings,
                    settings=replace(settings, seed=seed),
                    device=torch_device,
                )
            runs.append(cache[key])
        return runs

    found_aps: dict[int, float] = {}
    rows = []
    for v in variants:
        runs = trained(v.config, v.method)
        aps = {s: r.ap for s, r in zip(seed_list, runs) if r.ap is not None}
        if v.method == "found":
            found_aps = aps
        rows.append(
            {
                "method": v.method,
                "coefficient": v.coefficient,
                "value": round(v.value, 6),
                "phi": phi if v.method != "paper" else round(v.value, 6),
                **_describe(v.config),
                "macs_ratio": round(v.ratio, 4),
                "matched": v.matched,
                **seed_statistics(aps),
                "ap50": _mean_metric(runs, "ap50"),
                "ap75": _mean_metric(runs, "ap75"),
                "train_seconds": round(sum(r.seconds for r in runs), 2),
                "error": "; ".join(r.error for r in runs if r.error),
            }
        )
    for row in rows:  # each method against the found coefficients, paired on the seeds
        aps = dict(zip(row["seeds"], row["ap_per_seed"]))
        row.update(paired_difference(aps, found_aps))
    fidelity = []
    for rank, (t, config) in enumerate(ranked, start=1):
        runs = trained(config, f"trial #{t.number}")
        aps = {s: r.ap for s, r in zip(seed_list, runs) if r.ap is not None}
        fidelity.append(
            {
                "rank": rank,
                "trial": t.number,
                "search_ap": trial_ap(t),
                "ap": seed_statistics(aps)["ap"],
                **_describe(config),
                "error": "; ".join(r.error for r in runs if r.error),
            }
        )
    rho, p_value = spearman([r["search_ap"] for r in fidelity], [r["ap"] for r in fidelity])

    summary = {
        "format": "effscale-validation-1",
        "effscale_version": effscale_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": {"name": d.study.name, "storage": location.url, "study_file": str(d.path)},
        "trial_number": chosen.number,
        "coefficients": {
            "alpha": chosen.point.alpha,
            "beta": chosen.point.beta,
            "gamma": chosen.point.gamma,
            "width_growth": chosen.point.width_growth,
            "depth_step": chosen.point.depth_step,
            "fusion": chosen.point.fusion,
        },
        "phi": phi,
        "target_macs": variants[0].target_macs if variants else None,
        "match_tolerance": MATCH_TOLERANCE,
        "device": torch_device,
        "train_settings": settings.to_dict(),
        "seeds": list(seed_list),
        "num_classes": num_classes,
        "methods": rows,
        "configs": {v.method: v.config.to_dict() for v in variants},
        "fidelity": {"top_k": top_k, "trials": fidelity, "spearman_rho": rho, "p_value": p_value},
        "counting_convention": COUNTING_CONVENTION,
    }
    md = _markdown(d.study.name, chosen.number, phi, rows, fidelity, rho, p_value, markdown_table)
    with atomic_directory(out, command="validate", study=d, overwrite=overwrite) as tmp:
        pd.DataFrame.from_records(rows).to_csv(tmp / "validation.csv", index=False)
        pd.DataFrame.from_records(
            fidelity,
            columns=[
                "rank",
                "trial",
                "search_ap",
                "ap",
                "image_size",
                "backbone_width",
                "backbone_depth",
                "bifpn_width",
                "bifpn_depth",
                "head_depth",
                "params",
                "gmacs",
                "error",
            ],
        ).to_csv(tmp / "fidelity.csv", index=False)
        (tmp / "validation.md").write_text(md)
        plot_validation(
            tmp / "validation.png",
            rows,
            fidelity,
            rho=rho,
            phi=phi,
            title=f"{d.study.name}: trial {chosen.number} at φ = {phi:g}",
        )
        (tmp / "validation.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return ValidationResult(
        out=Path(out),
        phi=phi,
        trial=chosen.number,
        rows=rows,
        fidelity=fidelity,
        rho=rho,
        p_value=p_value,
        summary=summary,
    )


def _with_interval(mean: float | None, low: float | None, high: float | None) -> str:
    if mean is None:
        return "–"
    if low is None or high is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _markdown(
    name: str,
    number: int,
    phi: float,
    rows: list[dict[str, Any]],
    fidelity: list[dict[str, Any]],
    rho: float | None,
    p_value: float | None,
    table: Callable[..., str],
) -> str:
    cols = (
        "method",
        "coefficient",
        "value",
        "image_size",
        "backbone_width",
        "backbone_depth",
        "bifpn_width",
        "bifpn_depth",
        "params",
        "gmacs",
        "macs_ratio",
        "matched",
    )
    seeds = rows[0]["seeds"] if rows else []
    text = (
        f"# Scaling validation: {name}, trial {number}, φ = {phi:g}\n\n"
        "Each method scales the search's proxy to the found model's MACs (±"
        f"{MATCH_TOLERANCE:.0%}); AP after the study's training budget, the mean over the "
        f"seeds {', '.join(map(str, seeds))} with its 95% CI (Student's t), and the difference to "
        "the found coefficients paired on those seeds (mean, 95% CI, two-sided p). GMACs: 1e9 "
        "multiply-adds per image.\n\n"
    )
    shown = []
    for r in rows:
        row = {k: r[k] for k in cols}
        row["AP (95% CI)"] = _with_interval(r["ap"], r["ap_ci_low"], r["ap_ci_high"])
        row["Δ to found (95% CI)"] = (
            "–"
            if r["method"] == "found"
            else _with_interval(r["diff_to_found"], r["diff_ci_low"], r["diff_ci_high"])
        )
        row["p"] = (
            "–"
            if r["diff_p_value"] is None or r["method"] == "found"
            else (f"{r['diff_p_value']:.3g}")
        )
        shown.append(row)
    text += table(shown)
    unmatched = [r["method"] for r in rows if not r["matched"]]
    if unmatched:
        text += (
            f"\nNot matched within ±{MATCH_TOLERANCE:.0%} (rounding steps): "
            f"{', '.join(unmatched)}.\n"
        )
    text += f"\n## Proxy-rank fidelity (top {len(fidelity)} trials retrained at φ = {phi:g})\n\n"
    if fidelity:
        text += table(
            [{k: r[k] for k in ("rank", "trial", "search_ap", "ap", "gmacs")} for r in fidelity]
        )
    rho_text = (
        "undefined (fewer than 2 trials or constant AP)"
        if rho is None
        else f"{rho:.4f} (p = {p_value:.4g})"
        if p_value is not None
        else f"{rho:.4f}"
    )
    text += f"\nSpearman ρ between search AP and AP at φ = {phi:g}: {rho_text}\n"
    return text
