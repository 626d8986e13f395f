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
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from .definition import StudyDefinition
from .errors import ParameterError
from .markdown import code_fence
from .output import safe_child
from .plots import write_plots
from .trials import (
    CONSTRAINT_NAMES_ATTR,
    CONSTRAINTS_ATTR,
    constraint_values,
    dashboard_constraints,
    is_feasible,
)

__all__ = [
    "CONSTRAINTS_ATTR",
    "CONSTRAINT_NAMES_ATTR",
    "ARTIFACTS_SUFFIX",
    "dashboard_constraints",
    "constraint_values",
    "record_feasibility",
    "FeasibilityView",
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


def _with_constraints(trial: Any) -> Any:
    """``trial`` or, when it carries only named constraints, a copy with the list added."""
    attrs = trial.system_attrs
    if CONSTRAINTS_ATTR in attrs or not any(k.startswith(_NAMED_PREFIX) for k in attrs):
        return trial
    shown = copy.copy(trial)
    shown._system_attrs = {**attrs, CONSTRAINTS_ATTR: dashboard_constraints(attrs)}
    return shown


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
    """

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:  # storage-specific extras (engine, ...)
        if name == "_storage":
            raise AttributeError(name)
        return getattr(self._storage, name)

    def get_trial(self, trial_id: int) -> Any:
        """The trial, with its constraints in the dashboard's list form."""
        return _with_constraints(self._storage.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        """All trials of the study, with their constraints in the dashboard's list form."""
        return [
            _with_constraints(t)
            for t in self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        ]

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """The trial's system attrs, with ``"constraints"`` added when only named ones exist."""
        return dict(self.get_trial(trial_id).system_attrs)

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
            return self._storage.get_best_trial(study_id)
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        return max(feasible, key=lambda t: (sign * t.value, -t.number))


# ------------------------------------------------------------------------------------------ notes


def study_note(*, study_name: str, study_file_text: str, version: str) -> str:
    """The Markdown note ``effscale`` writes on a study: its origin and the study file."""
    fence = code_fence(study_file_text)
    return (
        f"## effscale study `{study_name}`\n\n"
        f"Made by effscale {version}. A trial is feasible when its `cost_ratio` constraint is "
        "<= 0 (the cost ratio of the phi=1 model over the proxy lies in the band); infeasible "
        "trials are pruned before they are scored. MACs are multiply-adds per image of the "
        "phi=1 model.\n\n"
        f"### Study file\n\n{fence}toml\n{study_file_text.rstrip()}\n{fence}\n"
    )


def write_study_note(study: Any, study_file_text: str, version: str) -> None:
    """Write the study's optuna-dashboard note (Markdown): effscale ``version`` and the study
    file's text (see :func:`study_note`). Replaces the current note, keeping its history."""
    from optuna_dashboard import save_note

    save_note(
        study,
        study_note(study_name=study.study_name, study_file_text=study_file_text, version=version),
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
    """Make a study ready to watch: write the note (the study file stored with the study, and
    the effscale version that made it, else ``version``) when it has none, name the objectives
    (:data:`METRIC_NAMES`) when they are unnamed, and with ``plots`` attach the current plots
    (:func:`attach_study_plots`). Returns the plots' artifact ids."""
    from optuna_dashboard import get_note

    if not get_note(study).strip():
        attrs = study.user_attrs
        write_study_note(
            study, attrs.get("study_file", definition.text), attrs.get("effscale_version", version)
        )
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


def make_app(storage: Any, *, artifact_store: Any | None = None) -> Any:
    """optuna-dashboard's WSGI application on ``storage`` seen through :class:`FeasibilityView`,
    with ``artifact_store`` serving attached files."""
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
    return wsgi(FeasibilityView(storage), artifact_store=artifact_store)


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
