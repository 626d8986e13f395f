"""Issue #18, point 2: several ``effscale search`` processes started together on one study.

Each process is a real ``effscale search STUDY --workers 1`` (a subprocess), all on the same
storage, released at the same moment after their imports (a barrier file). Before issue #18 two
processes drew the same sampler seed, so they ran the same points (SQLite: 6 pairs of identical
params in 21 trials for 20), and each stopped when *it* saw ``n_trials`` finished, so together
they ran one trial too many. The checks: 0 repeated params, exactly ``n_trials`` trials (all
finished, none failed or left running), and the trials that the processes say they started add
up to ``n_trials``.

The surrogate objective sleeps 0.1 s per evaluation (fault injection in the subprocess only) so
that the processes overlap for the whole run.

    python -m pytest tests/search_tests/test_reliability_concurrent.py -s   # prints the figures
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from effscale.search.storage import WORKER_ATTR, open_storage, resolve_storage_url
from effscale.search.study_file import load_study_file

REPO = Path(__file__).resolve().parents[2]
DELAY_S = 0.1
#: ``effscale`` whose surrogate sleeps; it starts on a go file (``slow_search.py``)
SLOW_SEARCH = [sys.executable, "-m", "tests.search_tests.slow_search"]
URLS = {"sqlite": "sqlite:///study.db", "journal": "journal:///study.journal"}
STARTED = re.compile(r"\((\d+) started now, (\d+) wanted\)")


def _run_together(path: Path, url: str, processes: int) -> tuple[list[int], list[str], float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    go = path.parent / f"go-{processes}"
    logs = [path.parent / f"search-{processes}-{i}.log" for i in range(processes)]
    ready = [path.parent / f"ready-{processes}-{i}" for i in range(processes)]
    children = []
    for log, flag in zip(logs, ready):
        with open(log, "wb") as out:
            children.append(
                subprocess.Popen(
                    [
                        *SLOW_SEARCH,
                        str(DELAY_S),
                        "--ready",
                        str(flag),
                        "--go",
                        str(go),
                        "search",
                        str(path),
                        "--quiet",
                        "--workers",
                        "1",
                        "--storage",
                        url,
                    ],
                    cwd=path.parent,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 300
        while not all(flag.exists() for flag in ready):
            assert time.monotonic() < deadline, "the processes did not get ready in 300 s"
            assert all(c.poll() is None for c in children), [log.read_text() for log in logs]
            time.sleep(0.05)
        start = time.perf_counter()
        go.touch()
        codes = [c.wait(timeout=600) for c in children]
        wall = time.perf_counter() - start
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return codes, [log.read_text() for log in logs], wall


def _trials(path: Path, url: str):
    d = load_study_file(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(resolve_storage_url(url, base_dir=d.folder))
    return optuna.load_study(study_name=d.study.name, storage=storage).get_trials(deepcopy=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_searches_run_each_point_once_and_stop_at_exactly_n(
    surrogate_study, capsys, kind
):
    url = URLS[kind]
    for processes, n_trials in ((2, 16), (4, 24)):
        path = surrogate_study({"study.n_trials": str(n_trials)}, name=f"study{processes}.toml")
        storage = url.replace("study.", f"study{processes}.")
        codes, logs, wall = _run_together(path, storage, processes)
        assert codes == [0] * processes, logs
        trials = _trials(path, storage)
        states = Counter(t.state.name for t in trials)
        params = Counter(tuple(sorted(t.params.items())) for t in trials)
        repeated = sum(count - 1 for count in params.values() if count > 1)
        started = [int(STARTED.search(log).group(1)) for log in logs]
        pids = Counter(t.system_attrs[WORKER_ATTR]["pid"] for t in trials)
        with capsys.disabled():
            print(
                f"\nFIGURE concurrent {kind}: {processes} processes, n_trials {n_trials}: "
                f"{len(trials)} trials ({states['COMPLETE']} complete, {states['PRUNED']} "
                f"pruned, {states['FAIL']} failed, {states['RUNNING']} running), duplicates "
                f"{repeated}, started per process {started} (sum {sum(started)}), trials per "
                f"worker {sorted(pids.values())}; wall {wall:.1f} s"
            )
        assert repeated == 0
        assert len(trials) == n_trials
        assert states["COMPLETE"] + states["PRUNED"] == n_trials
        assert sum(started) == n_trials
        assert len(pids) > 1, "only one process ran trials: the test did not overlap them"
