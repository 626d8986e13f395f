"""Reports of a study: the plots of :mod:`.plots` and a Markdown summary, ``report.md`` (the best
trials, a table per objective, the coefficients set against the paper's, the study file),
written into a folder atomically (:mod:`.output`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .definition import StudyDefinition
from .markdown import cell, code_fence
from .output import atomic_directory, safe_child
from .plots import PAPER, PLOT_FILES, PlotFiles, write_plots
from .trials import (
    Region,
    count_states,
    find_region,
    infeasible_trials,
    pareto_numbers,
    scored_trials,
    trial_ap,
    trial_coordinates,
    trial_macs,
)

__all__ = ["REPORT_FILE", "ReportFiles", "render_markdown", "write_report"]

REPORT_FILE = "report.md"
_TOP = 10


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _trial_rows(
    trials: Sequence[Any], region: Region | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Rows of a trial table; with ``region``, also each trial's AP spread over its seeds and
    its p-value against the region's best."""
    headers = [
        "trial",
        "α",
        "β",
        "γ",
        "BiFPN width ×",
        "BiFPN cells +",
        "AP",
        "GMACs",
        "cost ratio",
        "resolution",
    ]
    rows = []
    for t in trials:
        c = trial_coordinates(t)
        macs = trial_macs(t)
        rows.append(
            [
                f"#{t.number}",
                _finite(c["alpha"]),
                _finite(c["beta"]),
                _finite(c["gamma"]),
                _finite(c["width_growth"]),
                _finite(c["depth_step"]),
                trial_ap(t),
                None if macs is None else macs / 1e9,
                _finite(t.user_attrs.get("cost_ratio")),
                t.user_attrs.get("resolution"),
            ]
        )
        if region is not None:
            p = region.p_values.get(t.number)
            rows[-1] += [
                _finite(t.user_attrs.get("ap_std")),
                t.user_attrs.get("n_seeds"),
                "best" if t.number == region.best else ("–" if p is None else f"{p:.3g}"),
            ]
    if region is not None:
        headers += ["AP std", "seeds", "p vs best"]
    return headers, rows


def _coefficient_table(best: Any | None) -> str:
    c = trial_coordinates(best) if best is not None else {}
    labels = {
        "alpha": "α (depth)",
        "beta": "β (width)",
        "gamma": "γ (resolution)",
        "width_growth": "BiFPN width growth per φ",
        "depth_step": "BiFPN cells added per φ",
    }
    rows = []
    for key, label in labels.items():
        found = _finite(c.get(key))
        ratio = None if found is None else found / PAPER[key]
        rows.append([label, found, PAPER[key], ratio])
    found_ratio = None
    if all(_finite(c.get(k)) is not None for k in ("alpha", "beta", "gamma")):
        found_ratio = c["alpha"] * c["beta"] ** 2 * c["gamma"] ** 2
    paper_ratio = PAPER["alpha"] * PAPER["beta"] ** 2 * PAPER["gamma"] ** 2
    rows.append(
        [
            "α·β²·γ²",
            found_ratio,
            paper_ratio,
            None if found_ratio is None else found_ratio / paper_ratio,
        ]
    )
    header = f"found (trial #{best.number})" if best is not None else "found"
    return _table(["coefficient", header, "paper", "found / paper"], rows)


def render_markdown(
    definition: StudyDefinition,
    trials: Sequence[Any],
    *,
    plots: PlotFiles | None = None,
    study_text: str | None = None,
    version: str | None = None,
    made_by: str | None = None,
    packing: str | None = None,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
) -> str:
    """The Markdown report: counts, the region and its verdict, the best trials, a table per
    objective (and the Pareto front for two), the coefficients against the paper's, the plots
    and the study file (``study_text``, by default the one stored with the study or the
    definition's). ``packing``: how the last GPU run packed trials (the reason line of the
    study's ``packing`` user attr); ``confirmations``: the seeds ``effscale confirm`` added."""
    d = definition
    region = find_region(trials, confirmations=confirmations)
    by_number = {t.number: t for t in trials}
    scored = scored_trials(trials)
    counts = count_states(trials)
    infeasible = len(infeasible_trials(trials))
    low, high = d.constraint.band()
    by_ap = sorted(scored, key=lambda t: (-(trial_ap(t) or 0.0), t.number))
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
        f"- trials: {len(trials)} ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned of "
        f"which {infeasible} infeasible, {counts['FAIL']} failed, {counts['RUNNING']} running); "
        f"{d.target_trials()} wanted",
        f"- made by effscale {made_by or 'unknown'}; report by effscale {version or 'unknown'} "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- MACs are multiply-adds per image of the φ=1 model; GMACs = MACs / 1e9",
        *([f"- packing of the last GPU run: {packing}"] if packing else []),
        "",
        "## The answer: the region",
        "",
        f"**{region.advice}**",
        "",
        "The region is every feasible trial whose mean AP is not significantly below the best's "
        f"at {region.level:.0%} (one-sided paired t-test on the seeds both trained with); its "
        "coefficients span:",
        "",
        _table(
            ["coefficient", "low", "high", "paper", "paper inside"],
            [
                [name, lo, hi, PAPER[name], lo <= PAPER[name] <= hi]
                for name, (lo, hi) in region.ranges.items()
            ],
        ),
        "",
        *(
            [_table(*_trial_rows([by_number[n] for n in region.members], region)), ""]
            if region.members
            else []
        ),
        "## Best trials",
        "",
    ]
    if best is None:
        lines += ["No feasible trial has completed yet.", ""]
    else:
        lines += [_table(*_trial_rows(by_ap[:5])), ""]
    lines += [
        "## Found coefficients against the paper's",
        "",
        "EfficientDet: α=1.2, β=1.1, γ=1.15 (α·β²·γ² ≈ 1.92), BiFPN width ×1.35 and one "
        "more cell per φ.",
        "",
        _coefficient_table(best),
        "",
    ]
    lines += [
        f"## Objective: AP ({d.directions[0]})",
        "",
        f"The {min(_TOP, len(by_ap))} feasible trials with the highest AP.",
        "",
    ]
    lines += [_table(*_trial_rows(by_ap[:_TOP])) if by_ap else "No feasible trial yet.", ""]
    if "macs" in d.study.objectives:
        with_macs = [t for t in scored if trial_macs(t) is not None]
        by_macs = sorted(with_macs, key=lambda t: (trial_macs(t) or 0.0, t.number))
        lines += [
            f"## Objective: MACs ({d.directions[d.study.objectives.index('macs')]})",
            "",
            f"The {min(_TOP, len(by_macs))} feasible trials with the fewest MACs.",
            "",
        ]
        lines += [_table(*_trial_rows(by_macs[:_TOP])) if by_macs else "No feasible trial yet.", ""]
        front = (
            set(plots.cost.front)
            if plots is not None
            else set(
                pareto_numbers(
                    [(t.number, trial_macs(t) or 0.0, trial_ap(t) or 0.0) for t in with_macs]
                )
            )
        )
        on_front = sorted(
            (t for t in with_macs if t.number in front), key=lambda t: trial_macs(t) or 0.0
        )
        lines += ["### Pareto front (AP up, MACs down)", ""]
        lines += [_table(*_trial_rows(on_front)) if on_front else "Empty.", ""]
    if plots is not None:
        lines += ["## Plots", ""]
        lines += [
            f"![AP against MACs]({PLOT_FILES['ap_vs_macs']})",
            "",
            f"![Coefficients coloured by AP]({PLOT_FILES['coefficients']})",
            "",
            f"![AP with 95% CIs against alpha and beta, the region marked]({PLOT_FILES['region']})",
            "",
        ]
    text = study_text if study_text is not None else d.text
    fence = code_fence(text)
    lines += ["## Study file", "", f"{fence}toml", text.rstrip(), fence, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote into ``out``: ``report`` (``report.md``), the plots, and
    every file of the folder (``files``, the output marker included)."""

    out: Path
    report: Path
    plots: PlotFiles
    files: tuple[Path, ...] = field(default=())


def write_report(
    definition: StudyDefinition,
    trials: Sequence[Any],
    *,
    out: str | Path,
    overwrite: bool = False,
    study_text: str | None = None,
    version: str | None = None,
    made_by: str | None = None,
    packing: str | None = None,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
) -> ReportFiles:
    """Write the plots and ``report.md`` for ``trials`` into the folder ``out``, atomically
    (``confirmations``: the seeds ``effscale confirm`` added, for the region).

    ``out`` must be new or empty, or with ``overwrite`` an earlier report of this study
    (:func:`.output.check_output_dir`): another folder, or one holding the study's files, is
    refused and left as it was.
    """
    with atomic_directory(out, command="report", study=definition, overwrite=overwrite) as tmp:
        plots = write_plots(definition, trials, out=tmp, confirmations=confirmations)
        report = safe_child(tmp, REPORT_FILE)
        report.write_text(
            render_markdown(
                definition,
                trials,
                plots=plots,
                study_text=study_text,
                version=version,
                made_by=made_by,
                packing=packing,
                confirmations=confirmations,
            )
        )
    out = Path(out)
    final = PlotFiles(
        paths={k: out / p.name for k, p in plots.paths.items()},
        cost=plots.cost,
        coefficients=plots.coefficients,
        region=plots.region,
    )
    return ReportFiles(
        out=out, report=out / REPORT_FILE, plots=final, files=tuple(sorted(out.iterdir()))
    )
