"""Issue #18, point 6: a full disk fails the trial with ``fail_reason = "disk_full"``, stops the
run with one line and a non-zero exit, and damages nothing already stored.

The real case: the study (its file and its SQLite database or journal) lies on a 4 MiB tmpfs
mounted by the test (root only; skipped elsewhere). A subprocess runs ``effscale search``; at
its 3rd evaluation the objective fills the file system (fault injection in the subprocess only):

* ``own``: the objective's own write fails with ``ENOSPC`` (a checkpoint hitting the full
  disk), and the storage, on the same disk, may refuse the FAIL too;
* ``storage``: the objective goes on and the storage's next write fails.

Before issue #18: on SQLite 24 of 40 trials FAIL with no ``fail_reason`` and exit 0; on the
journal ``AssertionError: Should not reach.`` and a trial left RUNNING. The checks: exit 1, one
line, no traceback; every trial finished before the fault unchanged; no FAIL without a reason;
after the space is freed ``storage check`` passes and a rerun completes the study.

A second test, which runs everywhere, injects ``ENOSPC`` through a fixture with the storage on
a normal disk: the FAIL with ``fail_reason = "disk_full"`` is then always recorded.

    python -m pytest tests/search_tests/test_reliability_disk.py -s   # prints the figures
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

import effscale.search.objective as objective_module
from effscale.search.cli import main
from effscale.search.storage import open_storage, resolve_storage_url
from effscale.search.study_file import load_study_file

from .conftest import STUDIES, edit_study

REPO = Path(__file__).resolve().parents[2]
N_TRIALS = 10
URLS = {"sqlite": "sqlite:///study.db", "journal": "journal:///study.journal"}
#: effscale search whose 3rd evaluation fills the disk at argv[2]; argv[1] = own | storage
DRIVER = textwrap.dedent("""
    import sys
    import effscale.search.objective as objective
    original = objective.surrogate_accuracy
    calls = [0]
    def filling(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            with open(sys.argv[2], "wb") as filler:
                try:
                    while True:
                        filler.write(bytes(65536))
                        filler.flush()
                except OSError:
                    if sys.argv[1] == "own":
                        raise
        return original(*args, **kwargs)
    objective.surrogate_accuracy = filling
    from effscale.search.cli import main
    raise SystemExit(main(sys.argv[3:]))
""")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at ``tmp_path / "disk"`` (unmounted afterwards)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the fixture-based test still runs)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _write_study(folder: Path) -> Path:
    path = folder / "study.toml"
    path.write_text(
        edit_study(
            (STUDIES / "surrogate_compound.toml").read_text(),
            {"study.n_trials": str(N_TRIALS), "study.seeds": "[0]", "constraint.kind": '"formula"'},
        )
    )
    return path


def _trials(path: Path, url: str):
    d = load_study_file(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(resolve_storage_url(url, base_dir=d.folder))
    return optuna.load_study(study_name=d.study.name, storage=storage).get_trials(deepcopy=False)


def _record(trial) -> tuple:
    return (trial.number, trial.state.name, trial.params, trial.values, trial.user_attrs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, mode",
    [("sqlite", "own"), ("sqlite", "storage"), ("journal", "own"), ("journal", "storage")],
)
def test_a_full_disk_stops_the_run_in_one_line_and_damages_nothing(small_disk, capsys, kind, mode):
    url = URLS[kind]
    path = _write_study(small_disk)
    capsys.readouterr()
    assert main(["search", str(path), "--quiet", "--n-trials", "3", "--storage", url]) == 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    filler = small_disk / "filler"
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(filler), "search", str(path), "--quiet"]
        + ["--storage", url],
        capture_output=True,
        text=True,
        env=env,
        cwd=small_disk,
        timeout=600,
    )
    output = (result.stdout + result.stderr).strip()
    lines = output.splitlines()
    full = shutil.disk_usage(small_disk).free
    at_fault = _trials(path, url)  # read while the disk is still full
    finished = [_record(t) for t in at_fault if t.state.name in ("COMPLETE", "PRUNED")]
    failed = [t for t in at_fault if t.state.name == "FAIL"]
    left = [t for t in at_fault if t.state.name == "RUNNING"]

    filler.unlink()  # free the space, then check and resume
    capsys.readouterr()
    check = main(["storage", "check", str(path), "--storage", url])
    rerun = main(["search", str(path), "--quiet", "--storage", url])
    after = _trials(path, url)
    kept = {t.number: _record(t) for t in after}
    with capsys.disabled():
        print(
            f"\nFIGURE disk full ({kind}, {mode} write): exit {result.returncode}, "
            f"{len(lines)} line(s); at the fault {len(finished)} finished, "
            f"{len(failed)} FAIL {[t.user_attrs.get('fail_reason') for t in failed]}, "
            f"{len(left)} left RUNNING (free bytes {full}); finished trials changed "
            f"{sum(kept.get(r[0]) != r for r in finished)}; after freeing space: storage "
            f"check exit {check}, rerun exit {rerun}, "
            f"{sum(t.state.name in ('COMPLETE', 'PRUNED') for t in after)}/{N_TRIALS} finished"
        )
    assert result.returncode == 1, output
    assert len(lines) == 1 and lines[0].startswith("effscale search: disk full ("), output
    assert "Traceback" not in output and "Should not reach" not in output
    assert len(finished) >= 4  # the 3 of the first run and 1+ of the second before the fault
    assert all(t.user_attrs.get("fail_reason") == "disk_full" for t in failed)
    assert len(failed) + len(left) == 1  # the trial at the fault, recorded or not
    assert all(kept.get(r[0]) == r for r in finished)  # nothing stored changed
    assert rerun == 0
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == N_TRIALS
    assert not [t for t in after if t.state.name == "RUNNING"]
    assert all(
        t.user_attrs.get("fail_reason") in ("disk_full", "worker_lost")
        for t in after
        if t.state.name == "FAIL"
    )


def test_a_disk_full_error_fails_the_trial_with_its_reason(tmp_path, monkeypatch, capsys):
    path = _write_study(tmp_path)
    original = objective_module.surrogate_accuracy
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt.pt"))
        return original(*args, **kwargs)

    monkeypatch.setattr(objective_module, "surrogate_accuracy", full)
    capsys.readouterr()
    assert main(["search", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("effscale search: disk full (OSError: [Errno 28] No space left")
    assert 'recorded FAIL (fail_reason "disk_full")' in err
    trials = _trials(path, "sqlite:///study.db")
    *before, last = trials  # the run stopped at the full disk: nothing after it
    assert last.state.name == "FAIL" and last.user_attrs["fail_reason"] == "disk_full"
    assert last.user_attrs["error"].startswith("disk full: OSError: [Errno 28]")
    assert {t.state.name for t in before} <= {"COMPLETE", "PRUNED"}
    assert sum(t.state.name == "COMPLETE" for t in before) == 2
    with capsys.disabled():
        print(
            f"\nFIGURE disk full (fixture, SQLite on a normal disk): trial {last.number} FAIL "
            f"fail_reason={last.user_attrs['fail_reason']}, exit 1, one line, nothing after it"
        )
