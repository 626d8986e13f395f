"""The figures of effscale, drawn with matplotlib's Agg backend (no display needed) into PNG
files; each function also returns the data it drew, so that callers and tests can check a figure
against the trials.

* :func:`plot_ap_vs_macs` (``ap_vs_macs.png`` of a report, ``study.png`` of an export): AP of
  every feasible COMPLETE trial against the MACs (multiply-adds per image) of its φ=1 model, the
  Pareto front (AP up, MACs down) as a step line, the feasible band in MACs (the cost-ratio band
  times the proxy's MACs: exact for ``kind = "measured"``, approximate for the formula), the
  infeasible trials (never scored, so they have no AP) as ticks along the bottom and, for an
  export, the chosen trial and the family's members.
* :func:`plot_coefficients` (``coefficients.png``): α×β, α×γ and β×γ maps coloured by AP (cells,
  the best AP of each, where both axes are grid axes of a grid study; points otherwise),
  infeasible points as grey crosses, the best trial ringed and the paper's point (α=1.2, β=1.1,
  γ=1.15) starred.
* :func:`plot_region` (``region.png``): mean AP over seeds with its 95% confidence interval
  against α and against β, the region (the trials not significantly worse than the best,
  :func:`.trials.find_region`) marked and the best starred.
* :func:`plot_validation`: AP against MACs of the proxy scaled by each method at matched cost
  (the analogue of EfficientNet's Figure 8), and the proxy-rank fidelity scatter.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from effscale.detector.complexity import count_complexity

from .data import study_num_classes
from .definition import StudyDefinition
from .family import Family, build_configs, corner_points
from .output import safe_child
from .trials import (
    find_region,
    infeasible_trials,
    pareto_numbers,
    scored_trials,
    seed_aps,
    trial_ap,
    trial_coordinates,
    trial_macs,
)

__all__ = [
    "PAPER",
    "PLOT_FILES",
    "CostPlot",
    "CoefficientPlot",
    "RegionPlot",
    "plot_region",
    "PlotFiles",
    "proxy_macs",
    "plot_ap_vs_macs",
    "plot_coefficients",
    "write_plots",
    "plot_validation",
]

#: EfficientDet's scaling: compound coefficients and the BiFPN's growth per φ
PAPER: dict[str, float] = {
    "alpha": 1.2,  # depth
    "beta": 1.1,  # width
    "gamma": 1.15,  # resolution
    "width_growth": 1.35,  # BiFPN channels ×1.35 per φ
    "depth_step": 1.0,  # BiFPN cells +1 per φ
}
#: plot name -> file name (the report's plots)
PLOT_FILES = {
    "ap_vs_macs": "ap_vs_macs.png",
    "coefficients": "coefficients.png",
    "region": "region.png",
}


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def proxy_macs(definition: StudyDefinition) -> int | None:
    """Multiply-adds per image of the study's proxy (its φ=0 model), or ``None`` when the number
    of classes cannot be known without the data."""
    try:
        classes = study_num_classes(definition)
    except (OSError, ValueError):
        return None
    point = corner_points(definition.space, definition.constraint)[0]
    phi0, _ = build_configs(definition.base, point, num_classes=classes)
    return int(count_complexity(phi0).macs)


@dataclass(frozen=True)
class CostPlot:
    """What :func:`plot_ap_vs_macs` drew. ``numbers``, ``macs`` (multiply-adds per image of the
    φ=1 model) and ``ap`` are the feasible COMPLETE trials, in trial order; ``front`` the
    numbers on the Pareto front (AP up, MACs down); ``infeasible_numbers`` and
    ``infeasible_macs`` the ticks of infeasible trials; ``band_macs`` the feasible band in MACs
    (``None`` when the proxy's MACs are unknown), ``proxy_macs`` the proxy's MACs and
    ``band_exact`` whether the band is exact (measured constraint) rather than the formula's
    approximation; ``chosen`` the exported trial and ``family`` the exported members as (name,
    MACs) pairs, for an export. ``figure`` is the matplotlib figure when one was drawn."""

    numbers: tuple[int, ...]
    macs: tuple[float, ...]
    ap: tuple[float, ...]
    front: tuple[int, ...]
    infeasible_numbers: tuple[int, ...]
    infeasible_macs: tuple[float, ...]
    band_macs: tuple[float, float] | None
    band_exact: bool
    proxy_macs: int | None = None
    chosen: int | None = None
    family: tuple[tuple[str, float], ...] = ()
    figure: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CoefficientPlot:
    """What :func:`plot_coefficients` drew: the feasible COMPLETE trials' ``numbers`` with
    their ``alpha``, ``beta``, ``gamma`` and ``ap``; the infeasible trials' numbers and
    coordinates (``infeasible``: (α, β, γ) per trial); the ringed ``best`` trial; ``cells`` the
    maps drawn as cell grids, e.g. ``(("alpha", "beta"),)`` (both axes are grid axes of a grid
    study), the others being points; ``figure`` the matplotlib figure when one was drawn."""

    numbers: tuple[int, ...]
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    gamma: tuple[float, ...]
    ap: tuple[float, ...]
    infeasible_numbers: tuple[int, ...]
    infeasible: tuple[tuple[float, float, float], ...]
    best: int | None
    cells: tuple[tuple[str, str], ...]
    figure: Any = field(default=None, compare=False, repr=False)


#: the coefficient maps, (x, y) each
_PANELS = (("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma"))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_ap_vs_macs(
    definition: StudyDefinition,
    trials: Sequence[Any],
    *,
    path: str | Path | None = None,
    chosen: int | None = None,
    family: Family | None = None,
) -> CostPlot:
    """Draw AP against φ=1 MACs (see the module docstring); saves a PNG to ``path`` when given.
    ``chosen`` (a trial number) is starred and ``family``'s members are drawn as cost lines, for
    an export. Returns the plotted data."""
    scored = [t for t in scored_trials(trials) if trial_macs(t) is not None]
    points = [(t.number, float(trial_ap(t) or 0.0), float(trial_macs(t) or 0.0)) for t in scored]
    front = pareto_numbers([(n, macs, ap) for n, ap, macs in points])
    infeasible = [t for t in infeasible_trials(trials) if trial_macs(t) is not None]
    low, high = definition.constraint.band()
    base = proxy_macs(definition)
    band = None if base is None else (base * low, base * high)
    members = (
        () if family is None else tuple((m.name, float(m.complexity.macs)) for m in family.members)
    )
    data = CostPlot(
        numbers=tuple(p[0] for p in points),
        macs=tuple(p[2] for p in points),
        ap=tuple(p[1] for p in points),
        front=front,
        infeasible_numbers=tuple(t.number for t in infeasible),
        infeasible_macs=tuple(float(trial_macs(t) or 0.0) for t in infeasible),
        band_macs=band,
        band_exact=definition.constraint.kind == "measured",
        proxy_macs=base,
        chosen=chosen,
        family=members,
    )
    if path is None:
        return data

    from matplotlib.transforms import blended_transform_factory

    figure = _figure(9.5, 4.6)
    ax = figure.add_subplot()
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    if band is not None:
        label = (
            "feasible band"
            if data.band_exact
            else f"cost-ratio band [{low:.3g}, {high:.3g}] × proxy MACs (approximate)"
        )
        ax.axvspan(
            band[0] / 1e9, band[1] / 1e9, color="tab:green", alpha=0.12, label=label, gid="band"
        )
    if points:
        ax.scatter(
            [m / 1e9 for m in data.macs],
            data.ap,
            s=28,
            color="tab:blue",
            label=f"feasible trials ({len(points)})",
            zorder=3,
            gid="feasible",
        )
        on_front = sorted((p for p in points if p[0] in front), key=lambda p: p[2])
        ax.step(
            [p[2] / 1e9 for p in on_front],
            [p[1] for p in on_front],
            where="post",
            color="tab:red",
            linewidth=1.5,
            zorder=2,
        )
        ax.scatter(
            [p[2] / 1e9 for p in on_front],
            [p[1] for p in on_front],
            s=60,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            zorder=4,
            label=f"Pareto front ({len(on_front)})",
            gid="front",
        )
        for number, ap, macs in on_front:
            ax.annotate(
                f"#{number}",
                (macs / 1e9, ap),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="tab:red",
            )
        star = [(m, a) for n, a, m in points if n == chosen]
        if star:
            ax.scatter(
                [star[0][0] / 1e9],
                [star[0][1]],
                s=180,
                marker="*",
                color="tab:orange",
                edgecolors="k",
                linewidths=0.5,
                zorder=5,
                label=f"exported trial #{chosen}",
                gid="chosen",
            )
    else:
        ax.text(
            0.5,
            0.5,
            "no feasible trial has completed yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    if infeasible:
        ax.scatter(
            [m / 1e9 for m in data.infeasible_macs],
            [0.02] * len(infeasible),
            marker="|",
            s=120,
            color="0.55",
            transform=edge,
            zorder=3,
            label=f"infeasible, not scored ({len(infeasible)})",
            gid="infeasible",
        )
    for name, macs in members:
        ax.axvline(macs / 1e9, color="tab:purple", lw=0.8, ls="--", alpha=0.7)
        ax.text(
            macs / 1e9,
            0.98,
            name,
            transform=edge,
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="tab:purple",
        )
    if members:
        ax.plot([], [], color="tab:purple", ls="--", label="exported family (cost only)")
        ax.set_xscale("log")
    xs = [m / 1e9 for m in (*data.macs, *data.infeasible_macs, *(band or ()))]
    xs += [m / 1e9 for _, m in members]
    if xs and not members:  # the ticks are drawn in axes coordinates, which autoscaling ignores
        pad = 0.04 * (max(xs) - min(xs)) or 0.05 * max(xs) or 1.0
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    elif xs:
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    ax.set_xlabel("GMACs per image of the φ=1 model (multiply-adds / 1e9)")
    ax.set_ylabel("AP" if definition.objective.kind == "train" else "AP (surrogate)")
    ax.set_title(f"{definition.study.name}: AP against cost")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path)
    return replace(data, figure=figure)


def _cell_edges(values: Sequence[float]) -> list[float]:
    centers = sorted(set(values))
    if len(centers) == 1:
        return [centers[0] - 0.01, centers[0] + 0.01]
    mids = [(a + b) / 2 for a, b in zip(centers, centers[1:])]
    return [centers[0] - (mids[0] - centers[0]), *mids, centers[-1] + (centers[-1] - mids[-1])]


def _cells(
    ax: Any, xs: Sequence[float], ys: Sequence[float], aps: Sequence[float], norm: Any
) -> Any:
    cx, cy = sorted(set(xs)), sorted(set(ys))
    grid = np.full((len(cy), len(cx)), np.nan)
    for x, y, ap in zip(xs, ys, aps):
        i, j = cy.index(y), cx.index(x)
        grid[i, j] = ap if np.isnan(grid[i, j]) else max(grid[i, j], ap)
    return ax.pcolormesh(
        _cell_edges(xs),
        _cell_edges(ys),
        np.ma.masked_invalid(grid),
        cmap="viridis",
        norm=norm,
        shading="flat",
        gid="cells",
    )


def plot_coefficients(
    definition: StudyDefinition, trials: Sequence[Any], *, path: str | Path | None = None
) -> CoefficientPlot:
    """Draw the α×β, α×γ and β×γ maps coloured by AP (see the module docstring); saves a PNG to
    ``path`` when given. Returns the plotted data."""

    def coords(trial: Any) -> tuple[float, float, float] | None:
        c = trial_coordinates(trial)
        values = tuple(_finite(c[k]) for k in ("alpha", "beta", "gamma"))
        if values[0] is None or values[1] is None or values[2] is None:
            return None
        return values[0], values[1], values[2]

    def with_coords(chosen: Sequence[Any]) -> list[tuple[Any, tuple[float, float, float]]]:
        pairs = [(t, coords(t)) for t in chosen]
        return [(t, c) for t, c in pairs if c is not None]

    scored = with_coords(scored_trials(trials))
    infeasible = with_coords(infeasible_trials(trials))
    best = max(scored, key=lambda tc: (trial_ap(tc[0]), -tc[0].number), default=None)
    axes = set(definition.grid()) if definition.study.sampler == "grid" else set()
    cells = tuple(pair for pair in _PANELS if scored and set(pair) <= axes)
    data = CoefficientPlot(
        numbers=tuple(t.number for t, _ in scored),
        alpha=tuple(c[0] for _, c in scored),
        beta=tuple(c[1] for _, c in scored),
        gamma=tuple(c[2] for _, c in scored),
        ap=tuple(trial_ap(t) or 0.0 for t, _ in scored),
        infeasible_numbers=tuple(t.number for t, _ in infeasible),
        infeasible=tuple(c for _, c in infeasible),
        best=None if best is None else best[0].number,
        cells=cells,
    )
    if path is None:
        return data

    from matplotlib.colors import Normalize

    figure = _figure(13.0, 4.3)
    panels = figure.subplots(1, 3)
    norm = Normalize(min(data.ap), max(data.ap)) if data.ap else Normalize(0, 1)
    names = {"alpha": "α (depth)", "beta": "β (width)", "gamma": "γ (resolution)"}
    columns = {"alpha": data.alpha, "beta": data.beta, "gamma": data.gamma}
    index = {"alpha": 0, "beta": 1, "gamma": 2}
    mappable = None
    for ax, (x, y) in zip(panels, _PANELS):
        if data.infeasible:
            ax.scatter(
                [c[index[x]] for c in data.infeasible],
                [c[index[y]] for c in data.infeasible],
                marker="x",
                s=18,
                color="0.6",
                label=f"infeasible ({len(data.infeasible)})",
                zorder=2,
                gid="infeasible",
            )
        if data.numbers:
            if (x, y) in cells:
                mappable = _cells(ax, columns[x], columns[y], data.ap, norm)
            else:
                mappable = ax.scatter(
                    columns[x],
                    columns[y],
                    c=data.ap,
                    cmap="viridis",
                    norm=norm,
                    s=34,
                    edgecolors="k",
                    linewidths=0.3,
                    label=f"feasible ({len(data.numbers)})",
                    zorder=3,
                    gid="feasible",
                )
        if best is not None:
            ax.scatter(
                [best[1][index[x]]],
                [best[1][index[y]]],
                s=150,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.8,
                zorder=4,
                label=f"best #{best[0].number}",
                gid="best",
            )
        ax.scatter(
            [PAPER[x]],
            [PAPER[y]],
            marker="*",
            s=160,
            color="tab:orange",
            edgecolors="k",
            linewidths=0.5,
            zorder=5,
            label="paper",
        )
        ax.set_xlabel(names[x])
        ax.set_ylabel(names[y])
        ax.grid(alpha=0.3)
    panels[0].legend(fontsize=7, loc="best")
    if mappable is not None:
        figure.colorbar(mappable, ax=panels, label="AP", shrink=0.9)
    else:
        panels[1].set_title("no feasible trial has completed yet", fontsize=9, color="0.4")
    figure.suptitle(f"{definition.study.name}: coefficients coloured by AP")
    figure.savefig(path)
    return replace(data, figure=figure)


@dataclass(frozen=True)
class RegionPlot:
    """What :func:`plot_region` drew: per feasible COMPLETE trial (``numbers``), its ``alpha``,
    ``beta``, mean AP (``ap``) and the half-width of its 95% confidence interval over seeds
    (``ap_error``; 0 with one seed), which trials are in the ``region``, the ``best`` and the
    ``verdict``."""

    numbers: tuple[int, ...]
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    ap: tuple[float, ...]
    ap_error: tuple[float, ...]
    region: tuple[int, ...]
    best: int | None
    verdict: str
    figure: Any = field(default=None, compare=False, repr=False)


def _interval_half_width(values: Sequence[float], level: float = 0.95) -> float:
    """Half the ``level`` confidence interval of the mean of ``values`` (Student's t)."""
    if len(values) < 2:
        return 0.0
    return float(stats.sem(values) * stats.t.ppf(0.5 + level / 2, len(values) - 1))


def plot_region(
    definition: StudyDefinition,
    trials: Sequence[Any],
    *,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
    path: str | Path | None = None,
) -> RegionPlot:
    """Mean AP with 95% confidence intervals over seeds against α and against β, the region
    (:func:`.trials.find_region`) marked and the best starred; saves a PNG to ``path`` when
    given. Returns the plotted data."""
    region = find_region(trials, confirmations=confirmations)
    rows = []
    for t in scored_trials(trials):
        aps = list(seed_aps(t, confirmations).values())
        c = trial_coordinates(t)
        alpha, beta = _finite(c["alpha"]), _finite(c["beta"])
        if aps and alpha is not None and beta is not None:
            rows.append((t.number, alpha, beta, statistics.fmean(aps), _interval_half_width(aps)))
    data = RegionPlot(
        numbers=tuple(r[0] for r in rows),
        alpha=tuple(r[1] for r in rows),
        beta=tuple(r[2] for r in rows),
        ap=tuple(r[3] for r in rows),
        ap_error=tuple(r[4] for r in rows),
        region=region.members,
        best=region.best,
        verdict=region.verdict,
    )
    if path is None:
        return data

    figure = _figure(12.0, 4.4)
    panels = figure.subplots(1, 2, sharey=True)
    inside = [i for i, n in enumerate(data.numbers) if n in data.region]
    outside = [i for i, n in enumerate(data.numbers) if n not in data.region]
    for ax, name, xs in ((panels[0], "α (depth)", data.alpha), (panels[1], "β (width)", data.beta)):
        for chosen, color, label in (
            (outside, "0.6", "outside the region"),
            (inside, "tab:red", "region (tied with the best)"),
        ):
            if chosen:
                ax.errorbar(
                    [xs[i] for i in chosen],
                    [data.ap[i] for i in chosen],
                    yerr=[data.ap_error[i] for i in chosen],
                    fmt="o",
                    ms=4,
                    color=color,
                    ecolor=color,
                    elinewidth=1,
                    capsize=2,
                    label=label,
                    gid="region" if chosen is inside else "outside",
                )
        if data.best in data.numbers:
            i = data.numbers.index(data.best)
            ax.scatter(
                [xs[i]],
                [data.ap[i]],
                marker="*",
                s=180,
                color="tab:orange",
                edgecolors="k",
                linewidths=0.5,
                zorder=5,
                label=f"best #{data.best}",
                gid="best",
            )
        ax.axvline(
            PAPER["alpha" if name.startswith("α") else "beta"],
            color="tab:green",
            ls=":",
            lw=1,
            label="paper",
        )
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("AP: mean over seeds, 95% CI")
    if not rows:
        panels[0].set_title("no feasible trial has completed yet", fontsize=9, color="0.4")
    panels[1].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"{definition.study.name}: the region ({len(data.region)} trials), verdict {data.verdict}"
    )
    figure.savefig(path)
    return replace(data, figure=figure)


@dataclass(frozen=True)
class PlotFiles:
    """The PNGs :func:`write_plots` wrote (plot name -> path) and the data of each plot."""

    paths: dict[str, Path]
    cost: CostPlot
    coefficients: CoefficientPlot
    region: RegionPlot | None = None


def write_plots(
    definition: StudyDefinition,
    trials: Sequence[Any],
    *,
    out: str | Path,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
) -> PlotFiles:
    """Write :data:`PLOT_FILES` into the existing folder ``out`` (``confirmations``: the seeds
    ``effscale confirm`` added, for the region)."""
    out = Path(out)
    paths = {name: safe_child(out, file) for name, file in PLOT_FILES.items()}
    cost = plot_ap_vs_macs(definition, trials, path=paths["ap_vs_macs"])
    coefficients = plot_coefficients(definition, trials, path=paths["coefficients"])
    region = plot_region(definition, trials, confirmations=confirmations, path=paths["region"])
    return PlotFiles(paths=paths, cost=cost, coefficients=coefficients, region=region)


def plot_validation(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    fidelity: Sequence[dict[str, Any]],
    *,
    rho: float | None,
    phi: float,
    title: str,
) -> Path:
    """Two panels into the PNG ``path``: AP against GMACs per scaling method (``rows`` with
    ``method``, ``gmacs``, ``ap``), and retrained AP at φ against search AP at φ=1 for the top-k
    trials (``fidelity`` rows with ``trial``, ``search_ap``, ``ap``), titled with Spearman ρ."""
    fig = _figure(11.0, 4.5)
    left, right = fig.subplots(1, 2)
    for row in rows:
        ap = row.get("ap")
        if ap is None or not math.isfinite(ap):
            continue
        marker = "*" if row["method"] == "found" else "o"
        matched = row.get("matched", True)
        points = left.scatter(
            [row["gmacs"]], [ap], s=150 if marker == "*" else 50, marker=marker, zorder=3
        )
        if not matched:  # hollow: its MACs missed the ±5% band
            points.set_facecolor("none")
            points.set_edgecolor(f"C{len(left.collections) - 1}")
        label = row["method"] if matched else f"{row['method']} (MACs x{row['macs_ratio']:.2f})"
        left.annotate(
            label, (row["gmacs"], ap), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    left.set_xlabel("GMACs per image (multiply-adds / 1e9)")
    left.set_ylabel(f"AP after training at φ = {phi:g}")
    left.set_title("scaling methods at matched MACs", fontsize=10)
    left.grid(True, alpha=0.3)
    pts = [
        (r["search_ap"], r["ap"], r["trial"])
        for r in fidelity
        if r.get("ap") is not None and r.get("search_ap") is not None
    ]
    for search_ap, ap, number in pts:
        right.scatter([search_ap], [ap], color="tab:blue")
        right.annotate(
            f"#{number}", (search_ap, ap), textcoords="offset points", xytext=(4, 3), fontsize=8
        )
    right.set_xlabel("AP in the search (φ = 1)")
    right.set_ylabel(f"AP retrained at φ = {phi:g}")
    rho_text = "undefined" if rho is None else f"{rho:.3f}"
    right.set_title(
        f"proxy-rank fidelity: Spearman ρ = {rho_text} (top {len(fidelity)})", fontsize=10
    )
    right.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
