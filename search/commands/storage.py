"""``effscale storage check|repair STUDY.toml``: is the study's storage whole, and make it so.

``check`` reads only: for a journal file, torn or corrupt lines (optuna#5138) and a lock left
behind; for SQLite, ``PRAGMA quick_check``; then the study's trials by state and the RUNNING
ones whose worker is gone (dead process on this host, or no heartbeat within the grace period).
It exits 0 when all is well and 1 when ``repair`` has work to do.

``repair`` rewrites a damaged journal (a ``.bak`` copy first; torn tail and corrupt lines go,
whole logs glued onto a torn line are kept), then fails the stale trials with
``fail_reason = "worker_lost"`` and enqueues each once more with the same params
(``retry_of``); the next ``effscale search`` runs them. Run it while no search writes to the
study. Neither command ever creates a storage or a study.
"""

from __future__ import annotations

import argparse
import sqlite3
from typing import Any

import optuna

from ..output import shell_path
from ..storage import (
    HeartbeatSettings,
    check_journal,
    check_storage_file,
    find_stale_trials,
    heartbeat_settings,
    open_storage,
    repair_journal,
    resolve_storage_url,
    sweep_stale_trials,
)
from ..study_file import load_study_file

__all__ = ["configure", "run"]


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}; use an integer >= 1")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale storage``."""
    parser.description = (
        "check: report torn or corrupt journal lines, a damaged SQLite file and "
        "RUNNING trials whose worker is gone (exit 1 if any). repair: fix the "
        "journal (keeping a .bak copy), fail those trials and enqueue each once "
        "more with the same params."
    )
    parser.add_argument("action", choices=("check", "repair"), help="what to do")
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument(
        "--grace",
        type=_seconds,
        metavar="S",
        help="seconds without a heartbeat before a trial counts as lost "
        "(default: EFFSCALE_GRACE_PERIOD or 180)",
    )
    parser.set_defaults(func=run)


def _sqlite_quick_check(path: Any) -> str:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return " ".join(str(exc).split())
    finally:
        connection.close()
    text = "; ".join(str(row[0]) for row in rows)
    return "ok" if text == "ok" else text


def run(args: argparse.Namespace) -> int:
    """Check or repair; returns 0 (healthy / repaired) or 1 (check found problems)."""

    definition = load_study_file(args.study)
    location = resolve_storage_url(
        args.storage or definition.storage_url, base_dir=definition.folder
    )
    settings = (
        heartbeat_settings()
        if args.grace is None
        else HeartbeatSettings(interval=max(1, args.grace // 3), grace=args.grace)
    )
    check_storage_file(location)  # a folder, or a file that is not this kind of storage
    if location.path is not None and not location.path.is_file():
        raise FileNotFoundError(
            f"no study yet: {location.path} does not exist; run "
            f"`effscale search {shell_path(definition.path)}` first"
        )
    repair = args.action == "repair"
    problems = 0
    print(f"storage: {location.url}")

    if location.kind == "journal":
        assert location.path is not None
        report = check_journal(location.path)
        if report.ok:
            print(f"journal: {report.describe()}")
        elif repair:
            before, backup = repair_journal(location.path)
            print(
                f"journal: repaired: {before.describe()}; kept "
                f"{before.logs + len(before.recoverable)} logs; the file as it was is in "
                f"{backup}"
            )
        else:
            problems += 1
            print(
                f"journal: {report.describe()}; run `effscale storage repair "
                f"{shell_path(definition.path)}`"
            )
        if not repair and report.bad_lines:
            return 1  # Optuna cannot read the study until the file is repaired
    elif location.kind == "sqlite":
        verdict = _sqlite_quick_check(location.path)
        if verdict != "ok":
            print(
                f"sqlite: PRAGMA quick_check: {verdict}; the database is damaged: restore a "
                "copy, or salvage it with `sqlite3 DB .recover`"
            )
            return 1
        print("sqlite: PRAGMA quick_check: ok")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(location, heartbeat=settings if location.kind != "journal" else False)
    try:
        study = optuna.load_study(study_name=definition.study.name, storage=storage)
    except KeyError:
        raise ValueError(
            f"study.name: no study {definition.study.name!r} in {location.url}; "
            f"run `effscale search {shell_path(definition.path)}` first"
        ) from None
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    summary = ", ".join(
        f"{counts[s]} {s.lower()}"
        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        if s in counts
    )
    print(f"study {definition.study.name!r}: {len(trials)} trials ({summary or 'none'})")
    if repair:
        failed = sweep_stale_trials(study, settings)
        for stale in failed:
            print(
                f"trial {stale.number}: failed (worker lost: {stale.reason}); enqueued once "
                "more with the same params"
            )
        if not failed:
            print(f"no trial of a dead worker (grace {settings.grace} s)")
        return 0
    lost = find_stale_trials(study, settings)
    for item in lost:
        print(
            f"trial {item.number}: RUNNING but its worker is gone ({item.reason}); run "
            f"`effscale storage repair {shell_path(definition.path)}` to fail and retry it"
        )
    problems += len(lost)
    if not lost:
        print(f"no trial of a dead worker (grace {settings.grace} s)")
    return 1 if problems else 0
