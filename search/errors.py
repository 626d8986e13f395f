"""The errors effscale raises for input a user can fix.

Each message is one line: the thing at fault, the problem and the fix. Library functions name
their own parameter (``trial: ...``) or the study-file key (``constraint.mode: ...``); the
command line maps a parameter to its flag (``--trial: ...``), see :mod:`.cli`.
"""

from __future__ import annotations

__all__ = ["ParameterError", "RunStopped"]


class ParameterError(ValueError):
    """A bad value of ``parameter`` (a function parameter or a dotted study-file key): the
    message is ``"<parameter>: <problem>; <fix>"`` (``problem`` may hold the fix itself, after
    a ``;``, when ``fix`` is not given)."""

    def __init__(self, parameter: str, problem: str, fix: str | None = None) -> None:
        self.parameter = parameter
        self.problem = problem
        self.fix = fix
        detail = problem if fix is None else f"{problem}; {fix}"
        super().__init__(f"{parameter}: {detail}")

    def renamed(self, name: str) -> ParameterError:
        """The same error naming ``name`` (e.g. a command-line flag) instead."""
        return ParameterError(name, self.problem, self.fix)


class RunStopped(Exception):
    """A run that stopped before its end for a reason the user can act on (a signal, a full
    disk), after recording what it could: the message is one line, ``exit_code`` the process's
    exit status (``128 + signal`` for a signal)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(message)
