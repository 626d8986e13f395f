"""Issue #8, point 9: a torn journal line (a writer killed mid-append, a full disk) never makes
the study unreadable, and a stale journal lock never blocks a run for long. Also the
``effscale storage check|repair`` command and the heartbeat settings.

    python -m pytest tests/search_tests/test_reliability_journal.py -s   # prints the figures
"""

from __future__ import annotations

import json
import os
import shlex
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from effscale.search.cli import main
from effscale.search.storage import (
    HeartbeatSettings,
    check_journal,
    heartbeat_settings,
    open_storage,
    repair_journal,
    resolve_storage_url,
)

JOURNAL = "journal:///study.journal"


def _plain(path):
    """Optuna's own journal storage (no torn-tail repair)."""
    return JournalStorage(JournalFileBackend(str(path)))


def _tear(path) -> bytes:
    """Append the first half of a real log line without its newline, as a writer killed in
    the middle of ``write()`` leaves it; returns the torn bytes."""
    lines = path.read_bytes().split(b"\n")
    torn = lines[-2][: len(lines[-2]) // 2]
    with open(path, "ab") as handle:
        handle.write(torn)
    return torn


def _fill(storage, name: str, n: int):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return study


def test_optuna_5138_one_torn_line_breaks_every_later_load(tmp_path):
    """Reproduces optuna#5138 with Optuna's own backend: an append after a torn line glues onto
    it, and once anything follows, every load fails with JSONDecodeError."""
    path = tmp_path / "plain.journal"
    _fill(_plain(path), "s", 3)
    _tear(path)
    assert len(optuna.load_study(study_name="s", storage=_plain(path)).trials) == 3
    for _ in range(2):  # two more writers append (each of them errs or not, the file is broken)
        try:
            _fill(_plain(path), "s", 1)
        except Exception:
            pass
    with pytest.raises(json.JSONDecodeError):
        optuna.load_study(study_name="s", storage=_plain(path))


def test_effscale_cuts_a_torn_tail_before_appending(tmp_path, capsys):
    location = resolve_storage_url("journal:///s.journal", base_dir=tmp_path)
    _fill(open_storage(location), "s", 3)
    torn = _tear(location.path)
    size = location.path.stat().st_size
    for _ in range(3):  # the same three appends that broke Optuna's file
        _fill(open_storage(location), "s", 1)
    study = optuna.load_study(study_name="s", storage=_plain(location.path))  # Optuna reads it
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    backup = location.path.with_name("s.journal.bak")
    assert backup.read_bytes().endswith(torn) and backup.stat().st_size == size
    assert check_journal(location.path).ok
    with capsys.disabled():
        print(
            f"\nFIGURE torn journal: Optuna's backend: every load fails after a torn line "
            f"(optuna#5138); effscale's: {len(torn)} torn bytes cut before the next append, "
            f"6/6 trials readable, copy in {backup.name}"
        )


def test_effscale_mends_a_glued_last_line_before_appending(tmp_path):
    """A plain Optuna writer glued its log onto a torn line, then nothing followed: the file
    still loads, but the next append would break it. effscale's append keeps the whole log at
    the end of that line, drops the torn part, then appends."""
    location = resolve_storage_url("journal:///s.journal", base_dir=tmp_path)
    _fill(open_storage(location), "s", 2)
    lines = location.path.read_bytes().split(b"\n")[:-1]
    location.path.write_bytes(b"\n".join(lines[:-1] + [lines[-1][:15] + lines[-1]]) + b"\n")
    assert check_journal(location.path).recoverable == [len(lines)]
    _fill(open_storage(location), "s", 2)
    study = optuna.load_study(study_name="s", storage=_plain(location.path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert check_journal(location.path).ok
    assert location.path.with_name("s.journal.bak").is_file()


def test_a_glued_journal_is_refused_with_the_fix_then_repaired(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "5"})
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL]) == 0
    journal = path.parent / "study.journal"
    _tear(journal)
    for _ in range(2):  # a foreign writer (plain Optuna) glues onto it, then appends
        try:
            _fill(_plain(journal), "foreign", 1)
        except Exception:
            pass
    capsys.readouterr()
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    # the hint names this study's file, so that it works when pasted
    assert "corrupt line" in err and f"`effscale storage repair {shlex.quote(str(path))}`" in err

    assert main(["storage", "check", str(path), "--storage", JOURNAL]) == 1
    out = capsys.readouterr().out
    assert "corrupt line" in out and f"effscale storage repair {path}" in out  # pasted, it runs
    assert main(["storage", "repair", str(path), "--storage", JOURNAL]) == 0
    out = capsys.readouterr().out
    assert "repaired" in out and "study.journal.bak" in out
    assert (path.parent / "study.journal.bak").is_file()
    assert main(["storage", "check", str(path), "--storage", JOURNAL]) == 0
    capsys.readouterr()
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL, "--n-trials", "7"]) == 0
    assert "(2 started now, 7 wanted)" in capsys.readouterr().out
    study = optuna.load_study(study_name="surrogate-compound", storage=_plain(journal))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 7 and [t.number for t in finished[:5]] == list(range(5))


def test_repair_keeps_a_whole_log_glued_onto_a_torn_one(tmp_path):
    path = tmp_path / "g.journal"
    _fill(_plain(path), "s", 2)
    lines = path.read_bytes().split(b"\n")[:-1]
    glued = lines[-1][:10] + lines[-1]  # a torn copy of the last log, then the log itself
    path.write_bytes(b"\n".join(lines[:-1] + [glued, b'{"op_code": 7, "wor']))
    report = check_journal(path)
    assert (report.bad_lines, report.recoverable, report.torn_tail) == (
        [len(lines)],
        [len(lines)],
        19,
    )
    before, backup = repair_journal(path)
    assert (
        not before.ok
        and backup.read_bytes() == b"\n".join(lines[:-1] + [glued]) + b'\n{"op_code": 7, "wor'
    )
    assert path.read_bytes() == b"\n".join(lines) + b"\n"
    assert repair_journal(path) == (check_journal(path), None)  # nothing left to do


def test_a_stale_journal_lock_does_not_block_for_long(surrogate_study, monkeypatch, capsys):
    monkeypatch.setenv("EFFSCALE_JOURNAL_LOCK_GRACE", "3")
    path = surrogate_study({"study.n_trials": "3"})
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL]) == 0
    journal = path.parent / "study.journal"
    os.symlink(journal, str(journal) + ".lock")  # what a writer killed inside the lock leaves
    capsys.readouterr()
    assert main(["storage", "check", str(path), "--storage", JOURNAL]) == 0
    assert "lock file present for" in capsys.readouterr().out
    start = time.monotonic()
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL, "--n-trials", "6"]) == 0
    elapsed = time.monotonic() - start
    assert "(3 started now, 6 wanted)" in capsys.readouterr().out
    assert not os.path.lexists(str(journal) + ".lock")
    assert elapsed < 3 + 20, elapsed
    with capsys.disabled():
        print(
            f"\nFIGURE stale journal lock: grace 3 s; a search started on a stale lock "
            f"finished 3 more trials in {elapsed:.1f} s"
        )


# ------------------------------------------------------------------------------ settings, CLI


def test_heartbeat_settings_from_arguments_environment_and_defaults(monkeypatch):
    monkeypatch.delenv("EFFSCALE_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("EFFSCALE_GRACE_PERIOD", raising=False)
    assert heartbeat_settings() == HeartbeatSettings(60, 180)
    monkeypatch.setenv("EFFSCALE_HEARTBEAT_INTERVAL", "2")
    assert heartbeat_settings() == HeartbeatSettings(2, 6)
    monkeypatch.setenv("EFFSCALE_GRACE_PERIOD", "5")
    assert heartbeat_settings() == HeartbeatSettings(2, 5)
    assert heartbeat_settings(1, 3) == HeartbeatSettings(1, 3)
    with pytest.raises(ValueError, match="grace period: 2 s must exceed the heartbeat interval"):
        heartbeat_settings(2, 2)
    monkeypatch.setenv("EFFSCALE_GRACE_PERIOD", "soon")
    with pytest.raises(ValueError, match="EFFSCALE_GRACE_PERIOD: must be a whole number"):
        heartbeat_settings()


def test_storage_command_never_creates_a_storage(surrogate_study, capsys):
    path = surrogate_study()
    assert main(["storage", "check", str(path)]) == 2
    assert "no study yet" in capsys.readouterr().err
    assert main(["storage", "repair", str(path), "--storage", JOURNAL]) == 2
    capsys.readouterr()
    assert not (path.parent / "study.db").exists()
    assert not (path.parent / "study.journal").exists()


def test_storage_check_on_a_healthy_sqlite_study(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "3"})
    assert main(["search", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["storage", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quick_check: ok" in out and "3 trials" in out and "no trial of a dead worker" in out
