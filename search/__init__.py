"""effscale's search: study files and their typed definition, the compound-scaling space, the
trial objective, the backends that run a study, and what reads a stored study back.

Installed as ``effscale.search``. The names below are imported on first use, so that
``import effscale.search`` (and the ``effscale`` command line) stays cheap::

    from effscale.search import load_study_file, run_study

    definition = load_study_file("studies/surrogate_compound.toml")
    summary = run_study(definition, quiet=True)       # [execution] backend: optuna or ray
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "effscale.search":
    raise ImportError(
        f"this folder is the package effscale.search, imported here as {__name__!r}; "
        "install effscale (pip install -e .) and import effscale.search"
    )

if TYPE_CHECKING:
    from .definition import StudyDefinition
    from .errors import ParameterError
    from .export import export_coefficients, export_study
    from .family import build_configs, derive_family
    from .objective import Objective
    from .report import write_report
    from .runners import RunSummary, run_study
    from .space import Choices, CostConstraint, Fixed, Range, SampledPoint, SearchSpace, suggest
    from .storage import StorageLocation, open_storage, resolve_storage_url
    from .study_file import StudyFileError, load_study_file, parse_study_text
    from .surrogate import SurrogateConstants, constrained_optimum, surrogate_accuracy
    from .trials import best_trial, choose_trial, load_study, load_trials, pareto_front
    from .validate import validate_study

#: public name -> the submodule defining it
_EXPORTS = {
    "StudyDefinition": "definition",
    "ParameterError": "errors",
    "StudyFileError": "study_file",
    "load_study_file": "study_file",
    "parse_study_text": "study_file",
    "SearchSpace": "space",
    "CostConstraint": "space",
    "Range": "space",
    "Choices": "space",
    "Fixed": "space",
    "SampledPoint": "space",
    "suggest": "space",
    "SurrogateConstants": "surrogate",
    "surrogate_accuracy": "surrogate",
    "constrained_optimum": "surrogate",
    "build_configs": "family",
    "derive_family": "family",
    "Objective": "objective",
    "StorageLocation": "storage",
    "resolve_storage_url": "storage",
    "open_storage": "storage",
    "RunSummary": "runners",
    "run_study": "runners",
    "load_study": "trials",
    "load_trials": "trials",
    "best_trial": "trials",
    "pareto_front": "trials",
    "choose_trial": "trials",
    "export_study": "export",
    "export_coefficients": "export",
    "validate_study": "validate",
    "write_report": "report",
}

__all__ = [
    "Choices",
    "CostConstraint",
    "Fixed",
    "Objective",
    "ParameterError",
    "Range",
    "RunSummary",
    "SampledPoint",
    "SearchSpace",
    "StorageLocation",
    "StudyDefinition",
    "StudyFileError",
    "SurrogateConstants",
    "best_trial",
    "build_configs",
    "choose_trial",
    "constrained_optimum",
    "derive_family",
    "export_coefficients",
    "export_study",
    "load_study",
    "load_study_file",
    "load_trials",
    "open_storage",
    "pareto_front",
    "parse_study_text",
    "resolve_storage_url",
    "run_study",
    "suggest",
    "surrogate_accuracy",
    "validate_study",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'effscale.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
