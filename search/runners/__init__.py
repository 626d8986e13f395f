"""The backends that run a study's trials: Optuna worker processes on this machine
(:mod:`.optuna_runner`) or Ray Tune on a cluster (:mod:`.ray_driver`, whose worker side is
:mod:`.ray_worker`); what they share is in :mod:`.common`.

:func:`run_study` picks the backend from ``[execution] backend`` (or ``backend=``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..definition import StudyDefinition
from ..errors import ParameterError
from ..objective import Objective
from . import optuna_runner
from .common import RunSummary

__all__ = ["RunSummary", "RAY_OPTIONS", "run_study"]

#: keywords of :func:`run_study` that only the Ray backend takes
RAY_OPTIONS = (
    "address",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "max_failures",
    "storage_path",
)


def run_study(
    definition: StudyDefinition,
    *,
    backend: str | None = None,
    n_trials: int | None = None,
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    trials_per_gpu: int | str | None = None,
    storage: str | None = None,
    quiet: bool = False,
    cpu_count: int | None = None,
    objective: Any = Objective,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    max_failures: int | None = None,
    storage_path: str | Path | None = None,
) -> RunSummary:
    """Run (or resume) the study until it holds ``n_trials`` finished trials, on ``backend``
    (``"optuna"`` or ``"ray"``; ``None``: ``[execution] backend``).

    Every ``None`` option takes the study file's value. The Ray options (:data:`RAY_OPTIONS`)
    are refused on the Optuna backend, and the heartbeat options on Ray, whose trials Tune
    watches. See :func:`.optuna_runner.run_study` and :func:`.ray_driver.run_study`.
    """
    chosen = backend or definition.execution.backend
    ray_given: dict[str, Any] = {
        name: value
        for name, value in (
            ("address", address),
            ("cpus_per_trial", cpus_per_trial),
            ("gpus_per_trial", gpus_per_trial),
            ("max_concurrent", max_concurrent),
            ("max_failures", max_failures),
            ("storage_path", storage_path),
        )
        if value is not None
    }
    common: dict[str, Any] = dict(
        n_trials=n_trials,
        workers=workers,
        gpus=gpus,
        trials_per_gpu=trials_per_gpu,
        storage=storage,
        quiet=quiet,
        cpu_count=cpu_count,
        objective=objective,
    )
    if chosen == "optuna":
        if ray_given:
            name = next(iter(ray_given))
            raise ParameterError(name, "only for the Ray backend", "add `backend` ray or drop it")
        return optuna_runner.run_study(
            definition, **common, heartbeat_interval=heartbeat_interval, grace_period=grace_period
        )
    if chosen != "ray":
        raise ParameterError("backend", f"unknown value {chosen!r}", "choose optuna or ray")
    if heartbeat_interval is not None or grace_period is not None:
        name = "heartbeat_interval" if heartbeat_interval is not None else "grace_period"
        raise ParameterError(
            name, "only for the Optuna backend (Tune watches Ray's trials)", "drop it"
        )
    try:
        from . import ray_driver  # Ray is optional: the H200 test machine has no wheel for it
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("ray"):
            raise
        raise ParameterError(
            "backend",
            f"Ray is not installed here (no module {exc.name!r})",
            "pip install 'ray[tune]' or use backend optuna",
        ) from None
    return ray_driver.run_study(definition, **common, **ray_given)
