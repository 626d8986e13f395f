"""Figures of a study and of a scaling validation, drawn with matplotlib's Agg backend (no
display needed) into PNG files.

* :func:`plot_study`: AP against MACs (multiply-adds per image of each trial's φ=1 model) for
  every trial, the feasible band (``target·(1 ± tolerance)`` times the φ=0 proxy's MACs) shaded,
  the Pareto front (max AP, min MACs), the chosen trial and the exported family's projected costs.
* :func:`plot_validation`: AP against MACs of the proxy scaled by each method at matched cost
  (the analogue of EfficientNet's Figure 8), and the proxy-rank fidelity scatter.

Each function takes plain data (:class:`StudyPlotData`, records) so that it can be tested and
reused; :func:`study_plot_data` gathers that data from a study's trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StudyPlotData", "study_plot_data", "pareto_numbers", "plot_study", "plot_validation"]


@dataclass(frozen=True)
class StudyPlotData:
    """What :func:`plot_study` draws. MACs are in GMACs (1e9 multiply-adds per image), AP in
    [0, 1].

    ``points``: (trial number, GMACs, AP) of feasible COMPLETE trials; ``infeasible``: (trial
    number, GMACs) of trials outside the cost band (never trained); ``pareto``: trial numbers on
    the front; ``chosen``: the exported trial; ``proxy_gmacs``: the φ=0 proxy's cost; ``band``:
    the feasible GMACs range; ``family``: (member name, GMACs) of the exported members.
    """

    title: str
    points: tuple[tuple[int, float, float], ...]
    infeasible: tuple[tuple[int, float], ...]
    pareto: tuple[int, ...]
    chosen: int | None
    proxy_gmacs: float
    band: tuple[float, float]
    family: tuple[tuple[str, float], ...] = ()
    constraint_kind: str = "formula"


def pareto_numbers(points: Sequence[tuple[int, float, float]]) -> tuple[int, ...]:
    """Numbers of the (number, cost, AP) points not dominated in (min cost, max AP), by number."""
    front = []
    for number, cost, ap in points:
        dominated = any(c <= cost and a >= ap and (c < cost or a > ap)
                        for n, c, a in points if n != number)
        if not dominated:
            front.append(number)
    return tuple(sorted(front))


def study_plot_data(definition: Any, trials: Sequence[Any], *, chosen: Any = None,
                    family: Any = None, num_classes: int = 90) -> StudyPlotData:
    """Gather :class:`StudyPlotData` from a study's ``trials`` (Optuna ``FrozenTrial``).

    Trial cost is the ``macs`` user attr (the φ=1 model). The band is the constraint's
    ``target·(1 ± tolerance)`` applied to the proxy's measured MACs; for ``kind = "formula"``
    the search gated on the formula ratio, so measured costs may lie outside it.
    """
    from detector.complexity import count_complexity
    from search.objective import build_configs
    from search.space import CandidatePoint

    points, infeasible = [], []
    for t in trials:
        macs = t.user_attrs.get("macs")
        if macs is None:
            continue
        gmacs = float(macs) / 1e9
        if t.user_attrs.get("feasible") is False:
            infeasible.append((t.number, gmacs))
        elif t.state.name == "COMPLETE" and t.values and math.isfinite(t.values[0]):
            points.append((t.number, gmacs, float(t.values[0])))
    point = chosen.point if chosen is not None else CandidatePoint(
        alpha=1.2, beta=1.1, gamma=1.15, width_growth=1.35, depth_step=1.0,
        fusion=definition.base.fusion)
    proxy = build_configs(definition.base, point, num_classes=num_classes)[0]
    proxy_gmacs = count_complexity(proxy).macs / 1e9
    low, high = definition.constraint.band()
    members = () if family is None else tuple((m.name, m.gmacs) for m in family.members)
    return StudyPlotData(
        title=f"{definition.study.name}: AP vs MACs of the φ=1 models",
        points=tuple(points), infeasible=tuple(infeasible), pareto=pareto_numbers(points),
        chosen=None if chosen is None else chosen.number, proxy_gmacs=proxy_gmacs,
        band=(low * proxy_gmacs, high * proxy_gmacs), family=members,
        constraint_kind=definition.constraint.kind,
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_study(path: str | Path, data: StudyPlotData) -> Path:
    """Draw ``data`` into the PNG file ``path`` (log MACs axis); returns the path."""
    plt = _pyplot()
    from matplotlib.transforms import blended_transform_factory

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        ax.set_xscale("log")
        ax.axvspan(*data.band, color="tab:green", alpha=0.15,
                   label=f"feasible band ({data.constraint_kind} target ± tolerance × φ=0 MACs)")
        ax.axvline(data.proxy_gmacs, color="tab:green", lw=1, ls=":", label="φ=0 proxy")
        if data.points:
            numbers, gmacs, aps = zip(*data.points)
            ax.scatter(gmacs, aps, s=22, color="tab:blue", alpha=0.8, label="complete trials")
        front = sorted((g, a) for n, g, a in data.points if n in data.pareto)
        if front:
            ax.plot(*zip(*front), color="tab:orange", lw=1.5, marker="o", ms=4,
                    label="Pareto front")
        chosen = [(g, a) for n, g, a in data.points if n == data.chosen]
        if chosen:
            ax.scatter(*zip(*chosen), s=160, marker="*", color="tab:red", zorder=5,
                       label=f"exported trial #{data.chosen}")
        ymin = min((a for _, _, a in data.points), default=0.0)
        ymax = max((a for _, _, a in data.points), default=1.0)
        pad = max((ymax - ymin) * 0.15, ymax * 0.05, 1e-4)
        ax.set_ylim(max(0.0, ymin - pad), min(1.0, ymax + pad))
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        if data.infeasible:
            xs = [g for _, g in data.infeasible]
            ax.scatter(xs, [0.02] * len(xs), transform=edge, marker="x", color="tab:gray",
                       s=18, label="infeasible (not trained)")
        for name, gmacs in data.family:
            ax.axvline(gmacs, color="tab:purple", lw=0.8, ls="--", alpha=0.7)
            ax.text(gmacs, 0.98, name, transform=edge, rotation=90, va="top", ha="right",
                    fontsize=7, color="tab:purple")
        if data.family:
            ax.plot([], [], color="tab:purple", ls="--", label="exported family (cost only)")
        xs = ([g for _, g, _ in data.points] + [g for _, g in data.infeasible]
              + [g for _, g in data.family] + list(data.band) + [data.proxy_gmacs])
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
        ax.set_xlabel("GMACs per image (multiply-adds / 1e9)")
        ax.set_ylabel("AP (COCO, φ=1 proxy)")
        ax.set_title(data.title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_validation(path: str | Path, rows: Sequence[dict[str, Any]],
                    fidelity: Sequence[dict[str, Any]], *, rho: float | None, phi: float,
                    title: str) -> Path:
    """Two panels into the PNG ``path``: AP against GMACs per scaling method (``rows`` with
    ``method``, ``gmacs``, ``ap``), and retrained AP at φ against search AP at φ=1 for the top-k
    trials (``fidelity`` rows with ``trial``, ``search_ap``, ``ap``), titled with Spearman ρ."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    try:
        for row in rows:
            ap = row.get("ap")
            if ap is None or not math.isfinite(ap):
                continue
            marker = "*" if row["method"] == "found" else "o"
            matched = row.get("matched", True)
            points = left.scatter([row["gmacs"]], [ap], s=150 if marker == "*" else 50,
                                  marker=marker, zorder=3)
            if not matched:  # hollow: its MACs missed the ±5% band
                points.set_facecolor("none")
                points.set_edgecolor(f"C{len(left.collections) - 1}")
            label = row["method"] if matched else f"{row['method']} (MACs x{row['macs_ratio']:.2f})"
            left.annotate(label, (row["gmacs"], ap), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)
        left.set_xlabel("GMACs per image (multiply-adds / 1e9)")
        left.set_ylabel(f"AP after training at φ = {phi:g}")
        left.set_title("scaling methods at matched MACs", fontsize=10)
        left.grid(True, alpha=0.3)
        pts = [(r["search_ap"], r["ap"], r["trial"]) for r in fidelity
               if r.get("ap") is not None and r.get("search_ap") is not None]
        for search_ap, ap, number in pts:
            right.scatter([search_ap], [ap], color="tab:blue")
            right.annotate(f"#{number}", (search_ap, ap), textcoords="offset points",
                           xytext=(4, 3), fontsize=8)
        right.set_xlabel("AP in the search (φ = 1)")
        right.set_ylabel(f"AP retrained at φ = {phi:g}")
        rho_text = "undefined" if rho is None else f"{rho:.3f}"
        right.set_title(f"proxy-rank fidelity: Spearman ρ = {rho_text} (top {len(fidelity)})",
                        fontsize=10)
        right.grid(True, alpha=0.3)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
