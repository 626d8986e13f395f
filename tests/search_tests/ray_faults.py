"""Fault injection for the Ray backend's tests, through the runners' ``objective=`` hook: an
objective that fails in chosen attempts, and one that sleeps. Ray's workers get these classes by
value (``ray.cloudpickle.register_pickle_by_value``), so they need no import path of their own.

``python -m tests.search_tests.ray_faults STUDY ADDRESS SECONDS AFTER`` runs a Ray driver whose
trials sleep ``SECONDS`` once ``AFTER`` trials are COMPLETE (exit 130 after Ctrl-C, as
``effscale search`` does).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ray.cloudpickle
from optuna.trial import TrialState

from effscale.search.errors import RunStopped
from effscale.search.objective import Objective
from effscale.search.runners.ray_worker import ATTEMPTS_ATTR

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MESSAGE = "injected fault (test)"


def failing(*, always: frozenset[int] = frozenset(), once: frozenset[int] = frozenset()) -> type:
    """An objective class whose trials numbered in ``always`` raise in every attempt, and those
    in ``once`` in their first attempt, after the point is recorded (like a failing
    evaluation)."""

    class FailingObjective(Objective):
        def __call__(self, trial: Any) -> Any:
            value = super().__call__(trial)
            attempt = trial.storage.get_trial_system_attrs(trial._trial_id).get(ATTEMPTS_ATTR, 1)
            if trial.number in always or (trial.number in once and attempt == 1):
                raise RuntimeError(MESSAGE)
            return value

    return FailingObjective


def sleeping(seconds: float, *, after: int = 0) -> type:
    """An objective class whose trials sleep ``seconds`` first once ``after`` trials of the
    study are COMPLETE."""

    class SleepingObjective(Objective):
        def __call__(self, trial: Any) -> Any:
            complete = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(complete) >= after:
                time.sleep(seconds)
            return super().__call__(trial)

    return SleepingObjective


def _drive(study: str, address: str, seconds: float, after: int) -> int:
    from effscale.search.runners import ray_driver
    from effscale.search.study_file import load_study_file

    try:
        summary = ray_driver.run_study(
            load_study_file(study),
            address=address,
            max_concurrent=2,
            quiet=True,
            objective=sleeping(seconds, after=after),
        )
    except RunStopped as stopped:  # Ctrl-C: one line, as `effscale search` prints it
        print(f"effscale search: {stopped}", file=sys.stderr)
        return stopped.exit_code
    print(f"{summary.started} started now, {summary.target} wanted")
    return 0


if __name__ == "__main__":
    sys.exit(_drive(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
