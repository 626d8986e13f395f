"""Watching a study in optuna-dashboard: feasibility in the form it reads, notes, artifacts.

Feasibility
-----------
optuna-dashboard 0.21 reads a trial's constraints from one trial system attr only: ``"constraints"``
(:data:`CONSTRAINTS_ATTR`, the key of ``optuna_dashboard._serializer.CONSTRAINTS_KEY`` and of
Optuna's old ``constraints_func`` path), a JSON list of floats; its trial JSON carries it as
``"constraints"`` (``[]`` when the attr is missing) and the UI calls a trial feasible when every
value is ``<= 0``. Optuna 5.0's ``Trial.set_constraint(name, value)`` stores
``"constraints:<name>"`` instead, which the dashboard never reads, so such trials all look
feasible there.

Both cannot simply be written side by side: Optuna reads the list *and* the named keys
(``{"0": v, "cost_ratio": v}``), so every sampler would count the constraint twice, and
``GPSampler`` fails a trial ("The number of constraints must be the same for all trials") once
trials with and without the mirror are mixed. Finished trials cannot be changed either (Optuna's
storages raise ``UpdateFinishedTrialError``), so there is no mirroring an existing study in place.
Hence two parts:

* :func:`record_feasibility` is the write path for new trials. It stores the values once, as the
  ``"constraints"`` list (which Optuna 5.0 samplers read as constraint ``"0"``, ``"1"``, ...), plus
  their names under :data:`CONSTRAINT_NAMES_ATTR`; it replaces ``Trial.set_constraint`` and
  refuses to run on a trial that already has constraints. A study written this way shows its
  feasibility in any optuna-dashboard.
* :class:`FeasibilityView` wraps a storage for serving: trials that carry only
  ``"constraints:<name>"`` keys (every study written with ``set_constraint``) get the
  ``"constraints"`` list on read; nothing is written. ``effscale dashboard`` always serves
  through it, and its best trial of a single-objective study is the best *feasible* one.

What the view shows besides (also on read only): given the study's definition, a derived
coordinate (γ in solve mode, stored as the user attr ``gamma``) as a parameter with the bounds of
the space (:func:`derived_distributions`), so that the dashboard's plots can use it; each trial's
user attrs with :data:`FIRST_USER_ATTRS` first (the dashboard's box shows about six); and a
feasibility figure among the study's plots (:func:`.dashboard_page.feasibility_figure`, as the
``dashboard:plot_data:`` study system attrs optuna-dashboard reads its user-saved plots from).
:func:`make_app` adds the rest of effscale's part of the page (:mod:`.dashboard_page`).

Artifacts live in a ``FileSystemArtifactStore`` in ``<stem>.artifacts/`` next to the study file
(:func:`artifact_folder`). Optuna attaches files to a study at any time but to a trial only while
it runs, so per-trial ``metrics.json`` files are attached from the objective
(:func:`attach_trial_metrics`) and the study's plots to the study (:func:`attach_study_plots`).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import math
import socket
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from .dashboard_page import FEASIBILITY_FIGURE_ID, PageApp, feasibility_figure
from .definition import StudyDefinition
from .errors import ParameterError
from .markdown import code_fence
from .output import safe_child
from .plots import write_plots
from .trials import (
    CONSTRAINT_NAMES_ATTR,
    CONSTRAINTS_ATTR,
    Region,
    constraint_values,
    dashboard_constraints,
    find_region,
    is_feasible,
    study_confirmations,
)

__all__ = [
    "CONSTRAINTS_ATTR",
    "CONSTRAINT_NAMES_ATTR",
    "ARTIFACTS_SUFFIX",
    "dashboard_constraints",
    "constraint_values",
    "record_feasibility",
    "FeasibilityView",
    "FIRST_USER_ATTRS",
    "PLOT_DATA_PREFIX",
    "derived_distributions",
    "write_study_note",
    "study_note",
    "artifact_folder",
    "artifact_store_for",
    "list_artifacts",
    "attach_files",
    "attach_trial_metrics",
    "attach_study_plots",
    "METRIC_NAMES",
    "prepare_study",
    "is_loopback",
    "check_host",
    "make_app",
    "DashboardServer",
]

#: the artifact folder next to the study file is ``<stem>.artifacts``
ARTIFACTS_SUFFIX = ".artifacts"

_NAMED_PREFIX = CONSTRAINTS_ATTR + ":"
_ARTIFACT_PREFIX = "artifacts:"  # optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX


# ------------------------------------------------------------------------------------ feasibility


def record_feasibility(trial: Any, constraint_values: Mapping[str, float]) -> None:
    """Record a running trial's constraint values, name -> value (``<= 0`` feasible; for
    effscale ``{"cost_ratio": violation}``), in the form optuna-dashboard reads.

    Writes the trial system attr ``"constraints"`` = ``[value, ...]`` (in the mapping's order)
    and ``"effscale:constraint_names"`` = ``[name, ...]``. Optuna 5.0 reads the list as
    constraints ``"0"``, ``"1"``, ... for TPE, GP and NSGA-II, so this *replaces*
    ``trial.set_constraint``: calling both would count every constraint twice. Call it once per
    trial, before the trial ends (Optuna refuses changes to finished trials).
    """
    if not isinstance(trial, optuna.Trial):
        raise ValueError(
            "record_feasibility: needs the running optuna.Trial (finished trials "
            "cannot be changed); call it from the objective"
        )
    if not isinstance(constraint_values, Mapping) or not constraint_values:
        raise ValueError(
            "record_feasibility: give the constraints as a non-empty mapping, "
            'e.g. {"cost_ratio": violation}'
        )
    values: list[float] = []
    for name, value in constraint_values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"constraint {name!r}: {value!r} is not a number; give the "
                "violation as a float (<= 0 feasible)"
            ) from None
        if not math.isfinite(number):  # NaN/inf would also make the dashboard's JSON invalid
            raise ValueError(
                f"constraint {name!r}: must be finite, got {number}; clip the "
                "violation to a large finite number"
            )
        values.append(number)
    storage, trial_id = trial.storage, trial._trial_id
    existing = storage.get_trial_system_attrs(trial_id)
    if CONSTRAINTS_ATTR in existing or any(k.startswith(_NAMED_PREFIX) for k in existing):
        raise ValueError(
            f"trial {trial.number}: constraints are already recorded; record them "
            "once, with record_feasibility only (not also Trial.set_constraint, "
            "which Optuna would count twice)"
        )
    storage.set_trial_system_attr(
        trial_id, CONSTRAINT_NAMES_ATTR, [str(n) for n in constraint_values]
    )
    storage.set_trial_system_attr(trial_id, CONSTRAINTS_ATTR, values)


#: the user attrs the view lists first, in this order (then the others as stored)
FIRST_USER_ATTRS = (
    "feasible",
    "infeasible_reason",
    "macs",
    "cost_ratio",
    "ap_mean",
    "ap_std",
    "ap_ci95",
    "ap_per_seed",
    "n_seeds",
)
#: where optuna-dashboard reads a study's saved plotly figures from: study system attrs
#: ``dashboard:plot_data:<id>:<i>``, the figure's JSON in chunks of at most 2045 characters
#: (``optuna_dashboard._custom_plot_data``)
PLOT_DATA_PREFIX = "dashboard:plot_data:"
_PLOT_CHUNK = 2045


def derived_distributions(definition: StudyDefinition | None) -> dict[str, BaseDistribution]:
    """The coordinates a trial stores as user attrs although the space ranges over them, with the
    distribution the view shows them under: ``{"gamma": FloatDistribution(low, high)}`` in solve
    mode with a γ range (γ is derived, never an Optuna parameter), else ``{}``."""
    if definition is None or definition.constraint.mode != "solve":
        return {}
    gamma = definition.space.gamma
    low, high = getattr(gamma, "low", None), getattr(gamma, "high", None)
    if low is None or high is None or not low < high:
        return {}
    return {"gamma": FloatDistribution(float(low), float(high))}


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown_trial(trial: Any, derived: Mapping[str, BaseDistribution]) -> Any:
    """A copy of ``trial`` as the dashboard should see it: the constraints' list when only named
    constraints are stored, the ``derived`` coordinates as params, :data:`FIRST_USER_ATTRS`
    first."""
    shown = copy.copy(trial)
    attrs = trial.system_attrs
    if CONSTRAINTS_ATTR not in attrs and any(k.startswith(_NAMED_PREFIX) for k in attrs):
        shown._system_attrs = {**attrs, CONSTRAINTS_ATTR: dashboard_constraints(attrs)}
    user = trial.user_attrs
    extra = {
        name: distribution
        for name, distribution in derived.items()
        if name not in trial.params and _finite_number(user.get(name))
    }
    if extra:
        shown._params = {**trial.params, **{name: float(user[name]) for name in extra}}
        shown._distributions = {**trial.distributions, **extra}
    first = {k: user[k] for k in FIRST_USER_ATTRS if k in user}
    shown._user_attrs = {**first, **{k: v for k, v in user.items() if k not in first}}
    return shown


def _plot_attrs(figure: Mapping[str, Any]) -> dict[str, str]:
    text = json.dumps(figure, allow_nan=False)
    prefix = f"{PLOT_DATA_PREFIX}{FEASIBILITY_FIGURE_ID}:"
    return {
        f"{prefix}{i}": text[start : start + _PLOT_CHUNK]
        for i, start in enumerate(range(0, len(text), _PLOT_CHUNK))
    }


def _forward(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``{name}`` of the wrapped storage."
    return method


def _forwarding_base() -> type:
    names = [
        n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n))
    ]
    namespace: dict[str, Any] = {n: _forward(n) for n in names}
    namespace["__module__"] = __name__
    return type("_ForwardingStorage", (BaseStorage,), namespace)


class FeasibilityView(_forwarding_base()):  # type: ignore[misc]
    """A storage that reads and writes through ``storage`` and shows every trial's constraints
    in the ``"constraints"`` list optuna-dashboard reads (see the module docstring). Writes the
    dashboard makes (notes, artifacts) go to ``storage`` unchanged; trials are never rewritten.

    With the study's ``definition``, its derived coordinates appear as params
    (:func:`derived_distributions`) and its feasible band in the feasibility figure; other
    studies in the storage get the constraints, the attr order and a figure without a band.
    """

    def __init__(self, storage: Any, *, definition: StudyDefinition | None = None) -> None:
        self._storage = storage
        self._definition = definition
        self._derived = derived_distributions(definition)

    def __getattr__(self, name: str) -> Any:  # storage-specific extras (engine, ...)
        if name == "_storage":
            raise AttributeError(name)
        return getattr(self._storage, name)

    def _is_defined_study(self, study_id: int) -> bool:
        definition = self._definition
        return (
            definition is not None
            and self._storage.get_study_name_from_id(study_id) == definition.study.name
        )

    def _derived_for(self, study_id: int) -> Mapping[str, BaseDistribution]:
        return self._derived if self._derived and self._is_defined_study(study_id) else {}

    def get_trial(self, trial_id: int) -> Any:
        """The trial as the dashboard shows it (see :class:`FeasibilityView`)."""
        trial = self._storage.get_trial(trial_id)
        return _shown_trial(trial, self._derived if self._in_defined_study(trial) else {})

    def _in_defined_study(self, trial: Any) -> bool:
        if not self._derived or self._definition is None:
            return False
        storage = self._storage
        try:
            study_id = storage.get_study_id_from_name(self._definition.study.name)
            found = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        except KeyError:
            return False
        return bool(found == trial._trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        """All trials of the study as the dashboard shows them."""
        derived = self._derived_for(study_id)
        return [
            _shown_trial(t, derived)
            for t in self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        ]

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """The trial's system attrs, with ``"constraints"`` added when only named ones exist."""
        return dict(self.get_trial(trial_id).system_attrs)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        """The trial's user attrs, :data:`FIRST_USER_ATTRS` first."""
        return dict(self.get_trial(trial_id).user_attrs)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        """The trial's params, with the derived coordinates of the defined study."""
        return dict(self.get_trial(trial_id).params)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        """A param's internal value, derived coordinates included."""
        trial = self.get_trial(trial_id)
        if param_name not in trial.params:
            return float(self._storage.get_trial_param(trial_id, param_name))
        distribution = trial.distributions[param_name]
        return float(distribution.to_internal_repr(trial.params[param_name]))

    def _figure_attrs(self, study_id: int) -> dict[str, str]:
        trials = self._storage.get_all_trials(study_id, deepcopy=False)
        definition = self._definition
        defined = definition is not None and self._is_defined_study(study_id)
        band = definition.constraint.band() if defined and definition is not None else None
        figure = feasibility_figure(trials, band=band)
        return {} if figure is None else _plot_attrs(figure)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        """The study's system attrs with the feasibility figure among its plots."""
        return {**self._storage.get_study_system_attrs(study_id), **self._figure_attrs(study_id)}

    def get_all_studies(self) -> list[Any]:
        """All studies, each with the feasibility figure among its plots."""
        shown = []
        for study in self._storage.get_all_studies():
            copied = copy.copy(study)
            copied.system_attrs = {**study.system_attrs, **self._figure_attrs(study._study_id)}
            shown.append(copied)
        return shown

    def get_best_trial(self, study_id: int) -> Any:
        """The best feasible COMPLETE trial of a single-objective study (the wrapped storage's
        best when no trial is feasible)."""
        (direction,) = self._storage.get_study_directions(study_id)
        feasible = [
            t
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
            if is_feasible(t) and t.value is not None
        ]
        if not feasible:
            return self.get_trial(self._storage.get_best_trial(study_id)._trial_id)
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        return max(feasible, key=lambda t: (sign * t.value, -t.number))


# ------------------------------------------------------------------------------------------ notes


ANSWER_HEADING = "### The answer"
STUDY_FILE_HEADING = "### Study file"


def _answer_section(region: Region) -> str:
    """The note's answer: the verdict with its advice, the region's trials and the ranges of
    α, β, γ they span (see :func:`effscale.search.trials.find_region`)."""
    if region.best is None:
        return f"{ANSWER_HEADING}\n\nNo feasible trial has been scored yet.\n\n"
    members = ", ".join(f"#{n}" for n in region.members)
    rows = "\n".join(
        f"| {name} | {low:.4f} | {high:.4f} |" for name, (low, high) in region.ranges.items()
    )
    return (
        f"{ANSWER_HEADING}\n\n**Verdict: {region.verdict}.** {region.advice}\n\n"
        f"The region (feasible trials not significantly worse than the best, #{region.best}, at "
        f"{region.level:.0%} on shared seeds): {members}.\n\n"
        f"| coefficient | low | high |\n|---|---|---|\n{rows}\n\n"
    )


def study_note(
    *, study_name: str, study_file_text: str, version: str, region: Region | None = None
) -> str:
    """The Markdown note ``effscale`` writes on a study: its origin, the answer (``region``'s
    verdict, trials and coefficient ranges, when given) and the study file."""
    fence = code_fence(study_file_text)
    answer = "" if region is None else _answer_section(region)
    return (
        f"## effscale study `{study_name}`\n\n"
        f"Made by effscale {version}. A trial is feasible when its `cost_ratio` constraint is "
        "<= 0 (the cost ratio of the phi=1 model over the proxy lies in the band); infeasible "
        "trials are pruned before they are scored. MACs are multiply-adds per image of the "
        "phi=1 model.\n\n"
        f"{answer}"
        f"{STUDY_FILE_HEADING}\n\n{fence}toml\n{study_file_text.rstrip()}\n{fence}\n"
    )


def _without_answer(note: str) -> str:
    """``note`` with its answer section (``### The answer`` up to ``### Study file``) removed."""
    start = note.find(ANSWER_HEADING)
    end = note.find(STUDY_FILE_HEADING)
    return note if start < 0 or end < start else note[:start] + note[end:]


def write_study_note(
    study: Any, study_file_text: str, version: str, *, region: Region | None = None
) -> None:
    """Write the study's optuna-dashboard note (Markdown): effscale ``version``, the answer
    (``region``) and the study file's text (see :func:`study_note`). Replaces the current note,
    keeping its history."""
    from optuna_dashboard import save_note

    save_note(
        study,
        study_note(
            study_name=study.study_name,
            study_file_text=study_file_text,
            version=version,
            region=region,
        ),
    )


# -------------------------------------------------------------------------------------- artifacts


def artifact_folder(definition: StudyDefinition) -> Path:
    """``<stem>.artifacts/`` next to the study file: where the study's artifacts are stored."""
    return definition.folder / f"{definition.path.stem}{ARTIFACTS_SUFFIX}"


def artifact_store_for(definition: StudyDefinition) -> FileSystemArtifactStore:
    """The study's ``FileSystemArtifactStore`` in :func:`artifact_folder` (created if needed)."""
    folder = artifact_folder(definition)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"artifact folder {folder} is a file; move it away")
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def list_artifacts(study_or_trial: Any) -> list[dict[str, Any]]:
    """The artifacts attached to a study or a trial (dicts with ``artifact_id``, ``filename``,
    ``mimetype``, ``encoding``), skipping those the dashboard deleted."""
    if isinstance(study_or_trial, optuna.Study):
        attrs = study_or_trial._storage.get_study_system_attrs(study_or_trial._study_id)
    else:
        attrs = (
            study_or_trial.system_attrs
            if hasattr(study_or_trial, "system_attrs")
            else study_or_trial.storage.get_trial_system_attrs(study_or_trial._trial_id)
        )
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(_ARTIFACT_PREFIX)]
    return [m for m in metas if m is not None]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored_sha256(artifact_store: Any, artifact_id: str) -> str | None:
    try:
        reader = artifact_store.open_reader(artifact_id)
    except (ArtifactNotFound, OSError, ValueError):
        return None
    digest = hashlib.sha256()
    with reader:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_path(path: str | Path, under: Path | None) -> Path:
    resolved = Path(path) if under is None else safe_child(under, path)
    if not resolved.is_file():
        raise FileNotFoundError(f"cannot attach {resolved}: not a file")
    return resolved


def attach_files(
    study_or_trial: Any,
    paths: Iterable[str | Path],
    *,
    artifact_store: Any,
    under: str | Path | None = None,
) -> list[str]:
    """Attach files to a study (any time) or a running trial; returns their artifact ids.

    The dashboard lists each under its file name. A file whose name and bytes equal an artifact
    already attached there is not stored again (its id is returned), so attaching the same
    outputs twice adds nothing. With ``under`` (a folder), every path must be relative to it and
    stay inside it: absolute paths and ``..`` are refused.
    """
    if not isinstance(study_or_trial, (optuna.Study, optuna.Trial)):
        raise ValueError(
            "attach_files: attach to an optuna.Study or a running optuna.Trial "
            "(Optuna cannot change finished trials; attach to the study instead)"
        )
    base = None if under is None else Path(under)
    files = [_checked_path(p, base) for p in paths]
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"attach_files: two files are named {duplicates[0]!r}; the dashboard "
            "lists artifacts by file name, so rename one"
        )
    existing = list_artifacts(study_or_trial)
    ids: list[str] = []
    for file in files:
        digest = _sha256_file(file)
        same = next(
            (
                m["artifact_id"]
                for m in existing
                if m.get("filename") == file.name
                and _stored_sha256(artifact_store, m["artifact_id"]) == digest
            ),
            None,
        )
        if same is not None:
            ids.append(same)
            continue
        ids.append(
            upload_artifact(
                artifact_store=artifact_store, file_path=str(file), study_or_trial=study_or_trial
            )
        )
    return ids


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def attach_trial_metrics(
    trial: Any, *, artifact_store: Any, metrics: Mapping[str, Any] | None = None
) -> str:
    """Attach ``metrics.json`` to a running trial; returns its artifact id.

    The file holds the trial's ``number``, ``params``, ``constraints`` (by name) and user attrs
    (``macs`` multiply-adds per image, ``params``, ``activations``, ``cost_ratio``, ``ap`` …
    ``apl``, ``images_per_s``, ``train_seconds``, ...) as they are when called, updated by
    ``metrics`` (e.g. ``TrainResult.to_dict()``); non-finite floats become ``null``. Call it at
    the end of the objective, also before raising ``TrialPruned``.
    """
    if not isinstance(trial, optuna.Trial):
        raise ValueError(
            "attach_trial_metrics: needs the running optuna.Trial (Optuna cannot "
            "change finished trials)"
        )
    document: dict[str, Any] = {
        "number": trial.number,
        "params": dict(trial.params),
        "constraints": constraint_values(trial),
        **{k: _plain(v) for k, v in trial.user_attrs.items()},
    }
    document.update({k: _plain(v) for k, v in (metrics or {}).items()})
    with tempfile.TemporaryDirectory(prefix="effscale-metrics-") as folder:
        path = Path(folder) / "metrics.json"
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        (artifact_id,) = attach_files(trial, [path], artifact_store=artifact_store)
    return artifact_id


def attach_study_plots(study: Any, definition: Any, *, artifact_store: Any) -> list[str]:
    """Draw the study's plots (:func:`effscale.search.plots.write_plots`: AP against MACs with the
    feasible band and the Pareto front; the coefficient maps) and attach them to the study;
    unchanged plots are not stored again. Returns the artifact ids."""
    trials = study.get_trials(deepcopy=False)
    with tempfile.TemporaryDirectory(prefix="effscale-plots-") as folder:
        written = write_plots(definition, trials, out=Path(folder))
        return attach_files(study, list(written.paths.values()), artifact_store=artifact_store)


#: the names optuna-dashboard shows for effscale's objectives
METRIC_NAMES = {"ap": "AP", "macs": "MACs per image (phi=1)"}


def prepare_study(
    study: Any, definition: Any, *, artifact_store: Any | None, version: str, plots: bool = True
) -> list[str]:
    """Make a study ready to watch: write the note (the study file stored with the study, the
    effscale version that made it, else ``version``, and the current answer: the region and its
    verdict) when it has none or only effscale's own with an older answer (a note a user edited
    is kept), name the objectives (:data:`METRIC_NAMES`) when they are unnamed, and with
    ``plots`` attach the current plots (:func:`attach_study_plots`). Returns the plots' artifact
    ids."""
    from optuna_dashboard import get_note

    attrs = study.user_attrs
    text = attrs.get("study_file", definition.text)
    made_by = attrs.get("effscale_version", version)
    region = find_region(study.get_trials(deepcopy=False), confirmations=study_confirmations(study))
    current = get_note(study)
    fresh = study_note(
        study_name=study.study_name, study_file_text=text, version=made_by, region=region
    )
    untouched = _without_answer(current) == _without_answer(fresh)
    if current != fresh and (not current.strip() or untouched):
        write_study_note(study, text, made_by, region=region)
    if study.metric_names is None:
        study.set_metric_names([METRIC_NAMES[name] for name in definition.study.objectives])
    if plots and artifact_store is not None:
        return attach_study_plots(study, definition, artifact_store=artifact_store)
    return []


# -------------------------------------------------------------------------------------- serving


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or a name) reaches this machine only: every address it
    resolves to is a loopback address. ``""``, ``0.0.0.0`` and ``::`` (all interfaces) are not."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ParameterError(
            f"host {host}", "cannot resolve this name", "give an address such as 127.0.0.1"
        ) from None
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_host(host: str, *, allow_remote: bool) -> bool:
    """Refuse a non-loopback ``host`` unless ``allow_remote``; returns whether it is loopback.

    optuna-dashboard has no authentication: whoever reaches the port can read, edit and delete
    the studies in the storage.
    """
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise ParameterError(
            f"host {host or '(all interfaces)'}",
            "not a loopback address, and the dashboard has no authentication (anyone who "
            "reaches the port can read, edit and delete the studies)",
            "use `host` 127.0.0.1 (with an SSH tunnel from elsewhere), or set `allow_remote` on "
            "a trusted network",
        )
    return loopback


def make_app(
    storage: Any, *, artifact_store: Any | None = None, definition: StudyDefinition | None = None
) -> Any:
    """optuna-dashboard's WSGI application on ``storage`` seen through :class:`FeasibilityView`
    (with the study's ``definition``, when given), with ``artifact_store`` serving attached
    files, and effscale's part of the page (:class:`.dashboard_page.PageApp`)."""
    try:
        from optuna_dashboard import wsgi
    except ModuleNotFoundError as exc:
        if exc.name != "optuna_dashboard":
            raise
        raise ParameterError(
            "optuna-dashboard",
            "not installed",
            'pip install "effscale[dashboard]" (or optuna-dashboard)',
        ) from None
    view = FeasibilityView(storage, definition=definition)
    return PageApp(
        wsgi(view, artifact_store=artifact_store),
        view,
        study_name=None if definition is None else definition.study.name,
        band=None if definition is None else definition.constraint.band(),
    )


class DashboardServer:
    """A WSGI server for the dashboard ``app`` on ``host``:``port`` (``0``: any free port).

    ``serve_forever()`` blocks; ``shutdown()`` (from another thread) stops it; ``close()``
    frees the port. ``url`` is the dashboard's address. Request logging is off unless
    ``log_requests``.
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_requests: bool = False
    ) -> None:

        class Handler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                if log_requests:
                    super().log_message(format, *args)

        class Server(WSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        if not 0 <= port <= 65535:
            raise ParameterError(f"port {port}", "must be in 0..65535", "0 picks a free port")
        try:
            self._server = make_server(
                host.strip("[]"), port, app, server_class=Server, handler_class=Handler
            )
        except PermissionError:
            raise ParameterError(
                f"port {port}", "binding needs privileges", "use a port >= 1024"
            ) from None
        except OSError as exc:
            raise ParameterError(
                f"port {port}",
                f"cannot listen on {host} there ({exc.strerror or exc})",
                "choose another `port`, or 0 for any free one",
            ) from None
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT/dashboard/``."""
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard/"

    def serve_forever(self) -> None:
        """Serve requests until :meth:`shutdown`."""
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (call from another thread)."""
        self._server.shutdown()

    def close(self) -> None:
        """Free the port."""
        self._server.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
