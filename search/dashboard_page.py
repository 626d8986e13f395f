"""What ``effscale dashboard`` adds to optuna-dashboard's page: each trial's feasibility, cost and
AP over its seeds where they are seen first, and a feasibility figure.

optuna-dashboard 0.21 lists a trial by its number and its Optuna state only, so a trial that
missed the cost constraint reads "Pruned" like any other pruned trial, and its user attrs sit in
a box that shows six of them. Three parts, none of which writes to the storage:

* :func:`trial_summaries` says, per trial, what a user looks for first: the badges
  (``Infeasible``; ``In region`` when the study has seeds to test with) and lines on
  feasibility (the stored ``infeasible_reason``), MACs and cost ratio, AP with its seeds
  (``ap_mean``, ``ap_std``, ``ap_per_seed``, ``n_seeds``, and a CI when one is stored under an
  ``ap_ci...`` key) and the region (:func:`effscale.search.trials.find_region`). It formats what
  is stored; it computes no statistic of its own.
* :func:`feasibility_figure` is a plotly figure (plain JSON) of every trial's cost ratio with the
  feasible band, infeasible trials marked: the dashboard's own plots draw only trials with
  objective values, and an infeasible trial is pruned before it has one.
* :class:`PageApp` wraps the dashboard's WSGI app: it serves the summaries at
  ``/effscale/api/studies/<id>/summary``, the script ``dashboard_page.js`` (next to this module)
  at ``/effscale/dashboard_page.js``, and adds that script to the dashboard's HTML page. The
  script puts the badges next to each trial's state in the trial list and the lines at the top
  of the trial's page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from .trials import (
    constraint_values,
    find_region,
    is_feasible,
    study_confirmations,
    trial_ap,
    trial_macs,
)

__all__ = [
    "SCRIPT",
    "SCRIPT_URL",
    "SUMMARY_PATH",
    "FEASIBILITY_FIGURE_ID",
    "trial_summaries",
    "feasibility_figure",
    "PageApp",
]

#: the script the page loads, and where it is served
SCRIPT = Path(__file__).with_name("dashboard_page.js")
SCRIPT_URL = "/effscale/dashboard_page.js"
#: ``/effscale/api/studies/<study_id>/summary``
SUMMARY_PATH = re.compile(r"^/effscale/api/studies/(\d+)/summary$")
#: the id of :func:`feasibility_figure` among the study's plots (an HTML id in the page)
FEASIBILITY_FIGURE_ID = "effscale-feasibility"

_SCRIPT_TAG = f'<script defer src="{SCRIPT_URL}"></script>'.encode()


# -------------------------------------------------------------------------------- summaries


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _feasibility(trial: Any) -> bool | None:
    """Whether the trial met the constraint; ``None`` while that is not recorded yet."""
    if constraint_values(trial) or isinstance(trial.user_attrs.get("feasible"), bool):
        return is_feasible(trial)
    return None


def _ap_line(trial: Any) -> str:
    attrs = trial.user_attrs
    mean = _number(attrs.get("ap_mean"))
    if mean is None:
        mean = trial_ap(trial)
    if mean is None:
        return "AP not measured"
    per_seed = [v for v in attrs.get("ap_per_seed") or [] if _number(v) is not None]
    n_seeds = attrs.get("n_seeds") if isinstance(attrs.get("n_seeds"), int) else len(per_seed)
    std = _number(attrs.get("ap_std"))
    text = f"AP {mean:.4f}" + (f" ± {std:.4f} (sd)" if std is not None else "")
    if n_seeds:
        seeds = attrs.get("seeds")
        named = (
            ", ".join(f"seed {s}: {a:.4f}" for s, a in zip(seeds, per_seed))
            if isinstance(seeds, list) and len(seeds) == len(per_seed)
            else ", ".join(f"{a:.4f}" for a in per_seed)
        )
        text += f" over {n_seeds} seed{'s' if n_seeds != 1 else ''}" + (
            f" ({named})" if named else ""
        )
    for key in sorted(k for k in attrs if k.startswith("ap_ci")):
        bounds = attrs[key]
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            low, high = (_number(b) for b in bounds)
            if low is not None and high is not None:
                label = "95% CI" if key == "ap_ci95" else key
                text += f"; {label} [{low:.4f}, {high:.4f}]"
    return text


def _cost_line(trial: Any, band: tuple[float, float] | None) -> str:
    attrs = trial.user_attrs
    parts = []
    macs = trial_macs(trial)
    if macs is not None:
        parts.append(f"{macs / 1e9:.3f} GMACs per image (φ=1 model)")
    ratio = _number(attrs.get("cost_ratio"))
    if ratio is not None:
        inside = "" if band is None else f" (feasible band [{band[0]:.4f}, {band[1]:.4f}])"
        parts.append(f"cost ratio {ratio:.4f}{inside}")
    params = _number(attrs.get("params"))
    if params is not None:
        parts.append(f"{params / 1e6:.2f} M params")
    return " · ".join(parts)


def trial_summaries(
    trials: Sequence[Any],
    *,
    band: tuple[float, float] | None = None,
    confirmations: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Per trial, what the dashboard shows first: ``number``, ``feasible`` (``None`` while
    unrecorded), ``badges`` (``{"label", "tone"}``: ``Infeasible``; ``In region`` for the
    region's members when the trials have two or more seeds) and ``lines`` (feasibility with
    the stored reason; GMACs = 1e9 multiply-adds per image of the φ=1 model, the cost ratio and
    ``band``; AP with its seeds; the region's paired p-value against the best).

    Only stored values are shown; the region is :func:`effscale.search.trials.find_region`'s.
    Every number is finite, so the result is strict JSON."""
    region = find_region(trials, confirmations=confirmations)
    tested = region.best is not None and region.seeds >= 2
    summaries = []
    for trial in sorted(trials, key=lambda t: t.number):
        feasible = _feasibility(trial)
        badges: list[dict[str, str]] = []
        lines: list[str] = []
        if feasible is False:
            badges.append({"label": "Infeasible", "tone": "error"})
            reason = trial.user_attrs.get("infeasible_reason") or "the cost constraint is violated"
            lines.append(f"Infeasible: {reason}; pruned before it was scored")
        elif feasible is True:
            lines.append("Feasible: the cost ratio lies in the band")
        cost = _cost_line(trial, band)
        if cost:
            lines.append(cost)
        if feasible is not False and trial.state.name != "FAIL":
            lines.append(_ap_line(trial))
        if tested and trial.number in region.members:
            badges.append({"label": "In region", "tone": "success"})
            if trial.number == region.best:
                lines.append(f"Region: the best of {len(region.members)} trial(s) in the region")
            else:
                p = region.p_values.get(trial.number)
                shown = "untestable" if p is None else f"p = {p:.3g}"
                lines.append(
                    f"Region: not significantly worse than #{region.best} at "
                    f"{region.level:.0%} ({shown})"
                )
        elif tested and trial.number in region.p_values:
            p = region.p_values[trial.number]
            lines.append(
                f"Region: outside, significantly worse than #{region.best} (p = {p:.3g})"
                if p is not None
                else f"Region: outside (#{region.best} is the best)"
            )
        summaries.append(
            {"number": trial.number, "feasible": feasible, "badges": badges, "lines": lines}
        )
    return summaries


# -------------------------------------------------------------------------------- the figure


def feasibility_figure(
    trials: Iterable[Any], *, band: tuple[float, float] | None = None
) -> dict[str, Any] | None:
    """A plotly figure (``{"data", "layout"}``, JSON values) of each finished trial's cost ratio
    (φ=1 MACs over the proxy's, dimensionless) against its number: feasible trials as dots,
    infeasible ones as red crosses with their reason, ``band`` shaded. ``None`` when no trial
    records a cost ratio."""
    feasible: list[tuple[int, float, str]] = []
    infeasible: list[tuple[int, float, str]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        ratio = _number(trial.user_attrs.get("cost_ratio"))
        state = _feasibility(trial)
        if ratio is None or state is None:
            continue
        if state:
            ap = trial_ap(trial)
            feasible.append((trial.number, ratio, "not scored" if ap is None else f"AP {ap:.4f}"))
        else:
            reason = str(trial.user_attrs.get("infeasible_reason") or "infeasible")
            infeasible.append((trial.number, ratio, reason))
    if not feasible and not infeasible:
        return None

    def trace(points: list[tuple[int, float, str]], name: str, marker: dict[str, Any]) -> Any:
        return {
            "type": "scatter",
            "mode": "markers",
            "name": name,
            "x": [p[0] for p in points],
            "y": [p[1] for p in points],
            "text": [p[2] for p in points],
            "marker": marker,
            "hovertemplate": "Trial %{x}<br>cost ratio %{y:.4f}<br>%{text}<extra></extra>",
        }

    layout: dict[str, Any] = {
        "title": {"text": "Feasibility", "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": "Trial"}, "zeroline": False},
        "yaxis": {"title": {"text": "cost ratio (φ=1 MACs / proxy MACs)"}},
        "legend": {"orientation": "h", "y": -0.25},
        "margin": {"l": 70, "r": 20, "t": 50, "b": 40},
    }
    if band is not None:
        layout["shapes"] = [
            {
                "type": "rect",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": band[0],
                "y1": band[1],
                "fillcolor": "rgba(46, 125, 50, 0.15)",
                "line": {"width": 0},
                "layer": "below",
            }
        ]
        layout["annotations"] = [
            {
                "text": f"feasible band [{band[0]:.4f}, {band[1]:.4f}]",
                "xref": "paper",
                "x": 0.01,
                "xanchor": "left",
                "y": band[1],
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"color": "#2e7d32"},
            }
        ]
    return {
        "data": [
            trace(feasible, "feasible", {"color": "#1565c0", "size": 8}),
            trace(
                infeasible,
                "infeasible (pruned before scoring)",
                {"color": "#d32f2f", "size": 10, "symbol": "x"},
            ),
        ],
        "layout": layout,
    }


# ------------------------------------------------------------------------------- the WSGI app


def _json_response(start_response: Callable[..., Any], status: str, body: Any) -> list[bytes]:
    data = json.dumps(body, allow_nan=False).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


class PageApp:
    """The dashboard's WSGI ``app`` plus effscale's part of the page (see the module docstring):
    summaries of the studies in ``storage`` (the storage the dashboard serves), with the
    feasible ``band`` of the study named ``study_name``."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        storage: Any,
        *,
        study_name: str | None = None,
        band: tuple[float, float] | None = None,
    ) -> None:
        self.app, self.storage = app, storage
        self.study_name, self.band = study_name, band

    def summaries(self, study_id: int) -> dict[str, Any]:
        """``{"study_id", "trials": trial_summaries(...)}`` for one study of the storage."""
        name = self.storage.get_study_name_from_id(study_id)
        study = optuna.load_study(study_name=name, storage=self.storage)
        trials = study.get_trials(deepcopy=False)
        band = self.band if name == self.study_name else None
        return {
            "study_id": study_id,
            "trials": trial_summaries(trials, band=band, confirmations=study_confirmations(study)),
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and path == SCRIPT_URL:
            data = SCRIPT.read_bytes()
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/javascript; charset=utf-8"),
                    ("Content-Length", str(len(data))),
                    ("Cache-Control", "no-cache"),
                ],
            )
            return [data]
        match = SUMMARY_PATH.match(path)
        if method == "GET" and match:
            try:
                body = self.summaries(int(match.group(1)))
            except KeyError:
                return _json_response(
                    start_response, "404 Not Found", {"reason": f"no study {match.group(1)}"}
                )
            return _json_response(start_response, "200 OK", body)
        if method == "GET" and (path == "/dashboard" or path.startswith("/dashboard/")):
            return self._page(environ, start_response)
        return self.app(environ, start_response)

    def _page(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """The dashboard's HTML page with the script added after optuna-dashboard's bundle."""
        environ = {**environ}
        environ.pop("HTTP_IF_MODIFIED_SINCE", None)  # always the whole page, to add the tag to
        environ.pop("HTTP_RANGE", None)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.update(status=status, headers=headers)
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers = captured["headers"]
        kind = next((v for k, v in headers if k.lower() == "content-type"), "")
        if captured["status"].startswith("200") and kind.startswith("text/html"):
            body = body.replace(b"</head>", _SCRIPT_TAG + b"\n</head>", 1)
            headers = [
                (k, v)
                for k, v in headers
                if k.lower() not in ("content-length", "last-modified", "etag")
            ] + [("Content-Length", str(len(body)))]
        start_response(captured["status"], headers)
        return [body]
