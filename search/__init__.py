"""effscale's search: study files, the compound-scaling space, the trial objective, storages and
the Optuna runner.

The public API is re-exported here and imported lazily, so that ``import search`` (and every
``effscale`` command) stays cheap::

    from search import load_study_file, run_study
    summary = run_study(load_study_file("studies/surrogate_compound.toml"), quiet=True)
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> defining module
_EXPORTS = {
    "StudyDefinition": "search.study_file",
    "StudyFileError": "search.study_file",
    "load_study_file": "search.study_file",
    "parse_study_text": "search.study_file",
    "SearchSpace": "search.space",
    "CostConstraint": "search.space",
    "Range": "search.space",
    "Choices": "search.space",
    "Fixed": "search.space",
    "SampledPoint": "search.space",
    "suggest": "search.space",
    "solve_gamma": "search.space",
    "grid_search_space": "search.space",
    "SurrogateConstants": "search.surrogate",
    "surrogate_accuracy": "search.surrogate",
    "constrained_optimum": "search.surrogate",
    "Objective": "search.objective",
    "build_configs": "search.objective",
    "trial_coordinates": "search.objective",
    "StorageLocation": "search.storage",
    "resolve_storage_url": "search.storage",
    "open_storage": "search.storage",
    "RunSummary": "search.runners.optuna_runner",
    "run_study": "search.runners.optuna_runner",
    "best_trial": "search.runners.optuna_runner",
    "pareto_front": "search.runners.optuna_runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
