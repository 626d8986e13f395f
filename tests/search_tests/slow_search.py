"""``effscale`` with a surrogate that sleeps: fault injection for the reliability tests that run
real processes (killed workers, signals, concurrent searches), so that a test can act while a
trial is running.

    python -m tests.search_tests.slow_search SECONDS [--ready FILE --go FILE] ARGS...

runs ``effscale ARGS...`` with every surrogate evaluation sleeping ``SECONDS`` first. With
``--ready``/``--go`` it imports everything, touches the ready file and waits for the go file, so
that several processes start their searches together. Worker processes that ``effscale search
--workers N`` spawns import this module again as ``__mp_main__`` (with the parent's
``sys.argv``), so they sleep too. The tests run it with the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import effscale.search.objective as objective


def _seconds() -> float:
    return float(sys.argv[1])


def _slow(original: Any) -> Any:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(_seconds())
        return original(*args, **kwargs)

    return slow


if __name__ in ("__main__", "__mp_main__"):  # never when pytest imports it
    objective.surrogate_accuracy = _slow(objective.surrogate_accuracy)


def _main(argv: list[str]) -> int:
    from effscale.search.cli import main

    args = argv[1:]
    if args[:1] == ["--ready"]:
        import effscale.search.commands.search  # noqa: F401 - imported before the start

        ready, go, args = Path(args[1]), Path(args[3]), args[4:]
        ready.touch()
        while not go.exists():
            time.sleep(0.005)
    return main(args)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
