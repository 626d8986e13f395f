"""Reports of a finished study: plots (PNG, matplotlib Agg) and a Markdown summary.

Plots
-----
* ``ap_vs_macs.png`` (:func:`plot_ap_vs_macs`): AP of every feasible COMPLETE trial against the
  MACs (multiply-adds per image) of its φ=1 model, the Pareto front (AP up, MACs down) as a step
  line, the feasible band in MACs (the cost-ratio band times the proxy's MACs: exact for
  ``kind = "measured"``, approximate for the formula), and the infeasible trials (never
  scored, so they have no AP) as ticks along the bottom.
* ``coefficients.png`` (:func:`plot_coefficients`): α×β, α×γ and β×γ maps coloured by AP (cells,
  the best AP of each, where both axes are grid axes of a grid study; points otherwise),
  infeasible points as grey crosses, the best trial ringed and the paper's point (α=1.2, β=1.1,
  γ=1.15) starred.

Each plotting function returns the data it drew, so that callers (and tests) can check the figure
against the trials. :func:`write_report` writes both plots and ``report.md`` (the best trials, a
table per objective, the coefficients set against the paper's, the study file) into a folder,
atomically: everything is written to a temporary sibling folder that is then renamed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

__all__ = [
    "PAPER",
    "PLOT_FILES",
    "REPORT_FILE",
    "safe_child",
    "code_fence",
    "CostPlot",
    "CoefficientPlot",
    "PlotFiles",
    "ReportFiles",
    "proxy_macs",
    "plot_ap_vs_macs",
    "plot_coefficients",
    "write_plots",
    "render_markdown",
    "write_report",
]

#: EfficientDet's scaling: compound coefficients and the BiFPN's growth per φ
PAPER: dict[str, float] = {
    "alpha": 1.2,          # depth
    "beta": 1.1,           # width
    "gamma": 1.15,         # resolution
    "width_growth": 1.35,  # BiFPN channels ×1.35 per φ
    "depth_step": 1.0,     # BiFPN cells +1 per φ
}
#: plot name -> file name
PLOT_FILES = {"ap_vs_macs": "ap_vs_macs.png", "coefficients": "coefficients.png"}
REPORT_FILE = "report.md"
_TOP = 10


def safe_child(folder: str | Path, name: str | Path) -> Path:
    """``folder / name``, refusing a ``name`` that could leave ``folder``: absolute paths, drive
    letters, ``..`` parts and empty names raise ``ValueError``; so does a symbolic link
    that resolves outside."""
    text = str(name)
    pure = PurePath(text)
    windows = text.replace("\\", "/")
    if (not text or pure.is_absolute() or text.startswith(("/", "\\")) or ":" in text
            or any(part in ("..", "") for part in windows.split("/"))):
        raise ValueError(f"path {text!r} would leave {folder}; give a relative path without "
                         "'..' inside that folder")
    base = Path(folder).resolve()
    child = (base / pure).resolve()
    if child != base and base not in child.parents:
        raise ValueError(f"path {text!r} resolves outside {folder}; give a path inside it")
    return Path(folder) / pure


def code_fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in ``text`` (at least three)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


# ----------------------------------------------------------------------------------- trial data


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _feasible(trial: Any) -> bool:
    from search.dashboard import dashboard_constraints

    constraints = dashboard_constraints(trial.system_attrs)
    if constraints:
        return all(v <= 0 for v in constraints)
    return trial.user_attrs.get("feasible") is not False


def _ap(trial: Any) -> float | None:
    if trial.values:
        return _finite(trial.values[0])
    return _finite(trial.user_attrs.get("ap"))


def _scored(trials: Sequence[Any]) -> list[Any]:
    """Feasible COMPLETE trials with a finite AP, by number."""
    return sorted((t for t in trials if t.state.name == "COMPLETE" and _feasible(t)
                   and _ap(t) is not None), key=lambda t: t.number)


def _infeasible(trials: Sequence[Any]) -> list[Any]:
    return sorted((t for t in trials if t.state.name in ("COMPLETE", "PRUNED")
                   and not _feasible(t)), key=lambda t: t.number)


def _front(points: Sequence[tuple[int, float, float]]) -> tuple[int, ...]:
    """Numbers of the (number, AP, MACs) points no other point dominates (AP up, MACs down)."""
    from search.plots import pareto_numbers

    return pareto_numbers([(number, macs, ap) for number, ap, macs in points])


def _num_classes(definition: Any) -> int | None:
    if definition.base.num_classes:
        return definition.base.num_classes
    data = definition.data
    if data is None:
        return 90 if definition.objective.kind != "train" else None
    if data.generate is not None:
        return data.generate.num_classes
    try:
        from detector.data.coco import split_paths

        _, ann_file = split_paths(data.dir, "train")
        return len(json.loads(Path(ann_file).read_text()).get("categories") or []) or None
    except (OSError, ValueError, ImportError):
        return None


def proxy_macs(definition: Any) -> int | None:
    """Multiply-adds per image of the study's proxy (its φ=0 model), or ``None`` when the number
    of classes cannot be known without the data."""
    from detector.complexity import count_complexity
    from search.objective import build_configs, corner_points

    classes = _num_classes(definition)
    if classes is None:
        return None
    point = corner_points(definition.space, definition.constraint)[0]
    phi0, _ = build_configs(definition.base, point, num_classes=classes)
    return int(count_complexity(phi0).macs)


# ------------------------------------------------------------------------------------ the plots


@dataclass(frozen=True)
class CostPlot:
    """What :func:`plot_ap_vs_macs` drew. ``numbers``, ``macs`` (multiply-adds per image of the
    φ=1 model) and ``ap`` are the feasible COMPLETE trials, in trial order; ``front`` the
    numbers on the Pareto front (AP up, MACs down); ``infeasible_numbers`` and
    ``infeasible_macs`` the ticks of infeasible trials; ``band_macs`` the feasible band in MACs
    (``None`` when the proxy's MACs are unknown) and ``band_exact`` whether it is exact
    (measured constraint) rather than the formula's approximation. ``figure`` is the matplotlib
    figure when one was drawn."""

    numbers: tuple[int, ...]
    macs: tuple[float, ...]
    ap: tuple[float, ...]
    front: tuple[int, ...]
    infeasible_numbers: tuple[int, ...]
    infeasible_macs: tuple[float, ...]
    band_macs: tuple[float, float] | None
    band_exact: bool
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


def plot_ap_vs_macs(definition: Any, trials: Sequence[Any], *,
                    path: str | Path | None = None) -> CostPlot:
    """Draw AP against φ=1 MACs (see the module docstring); saves a PNG to ``path`` when given.
    Returns the plotted data."""
    scored = [t for t in _scored(trials) if _finite(t.user_attrs.get("macs")) is not None]
    points = [(t.number, float(_ap(t)), float(t.user_attrs["macs"])) for t in scored]
    front = _front(points)
    infeasible = [t for t in _infeasible(trials) if _finite(t.user_attrs.get("macs")) is not None]
    low, high = definition.constraint.band()
    base = proxy_macs(definition)
    band = None if base is None else (base * low, base * high)
    data = CostPlot(
        numbers=tuple(p[0] for p in points), macs=tuple(p[2] for p in points),
        ap=tuple(p[1] for p in points), front=front,
        infeasible_numbers=tuple(t.number for t in infeasible),
        infeasible_macs=tuple(float(t.user_attrs["macs"]) for t in infeasible),
        band_macs=band, band_exact=definition.constraint.kind == "measured",
    )
    if path is None:
        return data

    figure = _figure(9.5, 4.6)
    ax = figure.add_subplot()
    if band is not None:
        label = ("feasible band" if data.band_exact else
                 f"cost-ratio band [{low:.3g}, {high:.3g}] × proxy MACs (approximate)")
        ax.axvspan(band[0] / 1e9, band[1] / 1e9, color="tab:green", alpha=0.12, label=label,
                   gid="band")
    if points:
        ax.scatter([m / 1e9 for m in data.macs], data.ap, s=28, color="tab:blue",
                   label=f"feasible trials ({len(points)})", zorder=3, gid="feasible")
        on_front = sorted((p for p in points if p[0] in front), key=lambda p: p[2])
        ax.step([p[2] / 1e9 for p in on_front], [p[1] for p in on_front], where="post",
                color="tab:red", linewidth=1.5, zorder=2)
        ax.scatter([p[2] / 1e9 for p in on_front], [p[1] for p in on_front], s=60,
                   facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=4,
                   label=f"Pareto front ({len(on_front)})", gid="front")
        for number, ap, macs in on_front:
            ax.annotate(f"#{number}", (macs / 1e9, ap), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="tab:red")
    else:
        ax.text(0.5, 0.5, "no feasible trial has completed yet", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    if infeasible:
        from matplotlib.transforms import blended_transform_factory

        ticks = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter([m / 1e9 for m in data.infeasible_macs], [0.02] * len(infeasible),
                   marker="|", s=120, color="0.55", transform=ticks, zorder=3,
                   label=f"infeasible, not scored ({len(infeasible)})", gid="infeasible")
    xs = [m / 1e9 for m in (*data.macs, *data.infeasible_macs, *(band or ()))]
    if xs:  # the ticks are drawn in axes coordinates, which autoscaling ignores
        pad = 0.04 * (max(xs) - min(xs)) or 0.05 * max(xs) or 1.0
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_xlabel("GMACs per image of the φ=1 model (multiply-adds / 1e9)")
    ax.set_ylabel("AP" if definition.objective.kind == "train" else "AP (surrogate)")
    ax.set_title(f"{definition.study.name}: AP against cost")
    ax.grid(alpha=0.3)
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


def _cells(ax: Any, xs: Sequence[float], ys: Sequence[float], aps: Sequence[float],
           norm: Any) -> Any:
    import numpy as np

    cx, cy = sorted(set(xs)), sorted(set(ys))
    grid = np.full((len(cy), len(cx)), np.nan)
    for x, y, ap in zip(xs, ys, aps):
        i, j = cy.index(y), cx.index(x)
        grid[i, j] = ap if np.isnan(grid[i, j]) else max(grid[i, j], ap)
    return ax.pcolormesh(_cell_edges(xs), _cell_edges(ys), np.ma.masked_invalid(grid),
                         cmap="viridis", norm=norm, shading="flat", gid="cells")


def plot_coefficients(definition: Any, trials: Sequence[Any], *,
                      path: str | Path | None = None) -> CoefficientPlot:
    """Draw the α×β, α×γ and β×γ maps coloured by AP (see the module docstring); saves a PNG to
    ``path`` when given. Returns the plotted data."""
    from search.objective import trial_coordinates

    def coords(trial: Any) -> tuple[float, float, float] | None:
        c = trial_coordinates(trial)
        values = tuple(_finite(c[k]) for k in ("alpha", "beta", "gamma"))
        return None if None in values else values  # type: ignore[return-value]

    scored = [(t, coords(t)) for t in _scored(trials)]
    scored = [(t, c) for t, c in scored if c is not None]
    infeasible = [(t, coords(t)) for t in _infeasible(trials)]
    infeasible = [(t, c) for t, c in infeasible if c is not None]
    best = max(scored, key=lambda tc: (_ap(tc[0]), -tc[0].number), default=None)
    axes = set(definition.grid()) if definition.study.sampler == "grid" else set()
    cells = tuple(pair for pair in _PANELS if scored and set(pair) <= axes)
    data = CoefficientPlot(
        numbers=tuple(t.number for t, _ in scored),
        alpha=tuple(c[0] for _, c in scored), beta=tuple(c[1] for _, c in scored),
        gamma=tuple(c[2] for _, c in scored), ap=tuple(float(_ap(t)) for t, _ in scored),
        infeasible_numbers=tuple(t.number for t, _ in infeasible),
        infeasible=tuple(c for _, c in infeasible),
        best=None if best is None else best[0].number, cells=cells,
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
            ax.scatter([c[index[x]] for c in data.infeasible],
                       [c[index[y]] for c in data.infeasible], marker="x", s=18, color="0.6",
                       label=f"infeasible ({len(data.infeasible)})", zorder=2, gid="infeasible")
        if data.numbers:
            if (x, y) in cells:
                mappable = _cells(ax, columns[x], columns[y], data.ap, norm)
            else:
                mappable = ax.scatter(columns[x], columns[y], c=data.ap, cmap="viridis",
                                      norm=norm, s=34, edgecolors="k", linewidths=0.3,
                                      label=f"feasible ({len(data.numbers)})", zorder=3,
                                      gid="feasible")
        if best is not None:
            ax.scatter([best[1][index[x]]], [best[1][index[y]]], s=150, facecolors="none",
                       edgecolors="tab:red", linewidths=1.8, zorder=4,
                       label=f"best #{best[0].number}", gid="best")
        ax.scatter([PAPER[x]], [PAPER[y]], marker="*", s=160, color="tab:orange",
                   edgecolors="k", linewidths=0.5, zorder=5, label="paper")
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
class PlotFiles:
    """The PNGs :func:`write_plots` wrote (plot name -> path) and the data of each plot."""

    paths: dict[str, Path]
    cost: CostPlot
    coefficients: CoefficientPlot


def write_plots(definition: Any, trials: Sequence[Any], *, out: str | Path) -> PlotFiles:
    """Write :data:`PLOT_FILES` into the existing folder ``out``."""
    out = Path(out)
    paths = {name: safe_child(out, file) for name, file in PLOT_FILES.items()}
    cost = plot_ap_vs_macs(definition, trials, path=paths["ap_vs_macs"])
    coefficients = plot_coefficients(definition, trials, path=paths["coefficients"])
    return PlotFiles(paths=paths, cost=cost, coefficients=coefficients)


# -------------------------------------------------------------------------------------- markdown


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value).replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _trial_rows(trials: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    from search.objective import trial_coordinates

    headers = ["trial", "α", "β", "γ", "BiFPN width ×", "BiFPN cells +", "AP", "GMACs",
               "cost ratio", "resolution"]
    rows = []
    for t in trials:
        c = trial_coordinates(t)
        macs = _finite(t.user_attrs.get("macs"))
        rows.append([f"#{t.number}", _finite(c["alpha"]), _finite(c["beta"]),
                     _finite(c["gamma"]), _finite(c["width_growth"]), _finite(c["depth_step"]),
                     _ap(t), None if macs is None else macs / 1e9,
                     _finite(t.user_attrs.get("cost_ratio")), t.user_attrs.get("resolution")])
    return headers, rows


def _coefficient_table(best: Any | None) -> str:
    from search.objective import trial_coordinates

    c = trial_coordinates(best) if best is not None else {}
    labels = {"alpha": "α (depth)", "beta": "β (width)", "gamma": "γ (resolution)",
              "width_growth": "BiFPN width growth per φ", "depth_step": "BiFPN cells added per φ"}
    rows = []
    for key, label in labels.items():
        found = _finite(c.get(key))
        ratio = None if found is None else found / PAPER[key]
        rows.append([label, found, PAPER[key], ratio])
    found_ratio = None
    if all(_finite(c.get(k)) is not None for k in ("alpha", "beta", "gamma")):
        found_ratio = c["alpha"] * c["beta"] ** 2 * c["gamma"] ** 2
    paper_ratio = PAPER["alpha"] * PAPER["beta"] ** 2 * PAPER["gamma"] ** 2
    rows.append(["α·β²·γ²", found_ratio, paper_ratio,
                 None if found_ratio is None else found_ratio / paper_ratio])
    header = ("found (trial #%d)" % best.number) if best is not None else "found"
    return _table(["coefficient", header, "paper", "found / paper"], rows)


def render_markdown(definition: Any, trials: Sequence[Any], *, plots: PlotFiles | None = None,
                    study_text: str | None = None, version: str | None = None,
                    made_by: str | None = None, packing: str | None = None) -> str:
    """The Markdown report: counts, the best trials, a table per objective (and the Pareto
    front for two), the coefficients against the paper's, the plots and the study file
    (``study_text``, by default the one stored with the study or the definition's).
    ``packing``: how the last GPU run packed trials (the reason line of the study's ``packing``
    user attr)."""
    d = definition
    scored = _scored(trials)
    count = lambda state: sum(1 for t in trials if t.state.name == state)  # noqa: E731
    infeasible = len(_infeasible(trials))
    low, high = d.constraint.band()
    by_ap = sorted(scored, key=lambda t: (-_ap(t), t.number))
    best = by_ap[0] if by_ap else None
    lines = [
        f"# effscale report: study `{d.study.name}`",
        "",
        f"- study file: `{d.path.name}`; storage: `{d.storage_url}`",
        f"- sampler `{d.study.sampler}`, objectives {', '.join(d.study.objectives)} "
        f"({', '.join(d.directions)}); objective kind `{d.objective.kind}`",
        f"- constraint: {d.constraint.kind} cost ratio in [{low:.4g}, {high:.4g}] "
        f"(target {d.constraint.target:g} ± {d.constraint.tolerance:g}, mode "
        f"`{d.constraint.mode}`)",
        f"- trials: {len(trials)} ({count('COMPLETE')} complete, {count('PRUNED')} pruned of "
        f"which {infeasible} infeasible, {count('FAIL')} failed, {count('RUNNING')} running); "
        f"{d.target_trials()} wanted",
        f"- made by effscale {made_by or 'unknown'}; report by effscale {version or 'unknown'} "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- MACs are multiply-adds per image of the φ=1 model; GMACs = MACs / 1e9",
        *([f"- packing of the last GPU run: {packing}"] if packing else []),
        "",
        "## Best trials",
        "",
    ]
    if best is None:
        lines += ["No feasible trial has completed yet.", ""]
    else:
        lines += [_table(*_trial_rows(by_ap[:5])), ""]
    lines += ["## Found coefficients against the paper's", "",
              "EfficientDet: α=1.2, β=1.1, γ=1.15 (α·β²·γ² ≈ 1.92), BiFPN width ×1.35 and one "
              "more cell per φ.", "", _coefficient_table(best), ""]
    lines += [f"## Objective: AP ({d.directions[0]})", "",
              f"The {min(_TOP, len(by_ap))} feasible trials with the highest AP.", ""]
    lines += [_table(*_trial_rows(by_ap[:_TOP])) if by_ap else "No feasible trial yet.", ""]
    if "macs" in d.study.objectives:
        with_macs = [t for t in scored if _finite(t.user_attrs.get("macs")) is not None]
        by_macs = sorted(with_macs, key=lambda t: (t.user_attrs["macs"], t.number))
        lines += [f"## Objective: MACs ({d.directions[d.study.objectives.index('macs')]})", "",
                  f"The {min(_TOP, len(by_macs))} feasible trials with the fewest MACs.", ""]
        lines += [_table(*_trial_rows(by_macs[:_TOP])) if by_macs else "No feasible trial yet.",
                  ""]
        front = set(plots.cost.front) if plots is not None else set(_front(
            [(t.number, _ap(t), float(t.user_attrs["macs"])) for t in with_macs]))
        on_front = sorted((t for t in with_macs if t.number in front),
                          key=lambda t: t.user_attrs["macs"])
        lines += ["### Pareto front (AP up, MACs down)", ""]
        lines += [_table(*_trial_rows(on_front)) if on_front else "Empty.", ""]
    if plots is not None:
        lines += ["## Plots", ""]
        lines += [f"![AP against MACs]({PLOT_FILES['ap_vs_macs']})", "",
                  f"![Coefficients coloured by AP]({PLOT_FILES['coefficients']})", ""]
    text = study_text if study_text is not None else d.text
    fence = code_fence(text)
    lines += ["## Study file", "", f"{fence}toml", text.rstrip(), fence, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote into ``out``: ``report`` (``report.md``) and the plots."""

    out: Path
    report: Path
    plots: PlotFiles
    files: tuple[Path, ...] = field(default=())


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out}: folder is not empty; choose an empty or new folder, "
                         "or add --overwrite to replace it")


def write_report(definition: Any, trials: Sequence[Any], *, out: str | Path,
                 overwrite: bool = False, study_text: str | None = None,
                 version: str | None = None, made_by: str | None = None,
                 packing: str | None = None) -> ReportFiles:
    """Write the plots and ``report.md`` for ``trials`` into the folder ``out``.

    ``out`` must be new or empty unless ``overwrite`` (its old content is then replaced as a
    whole). Files are written into a temporary sibling folder first and renamed into place, so a
    failure leaves ``out`` as it was.
    """
    out = Path(out)
    _prepare_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # with the umask's permissions, unlike mkdtemp's 0700
    try:
        plots = write_plots(definition, trials, out=staging)
        report = safe_child(staging, REPORT_FILE)
        report.write_text(render_markdown(definition, trials, plots=plots,
                                          study_text=study_text, version=version,
                                          made_by=made_by, packing=packing))
        _prepare_out(out, overwrite)  # nobody filled it meanwhile
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = PlotFiles(paths={k: out / p.name for k, p in plots.paths.items()},
                      cost=plots.cost, coefficients=plots.coefficients)
    return ReportFiles(out=out, report=out / REPORT_FILE, plots=final,
                       files=tuple(sorted(out.iterdir())))
