"""Storage URLs resolve relative to the study file; SQLite is refused beyond 8 workers."""

from __future__ import annotations

import pytest
from optuna.storages import JournalStorage, RDBStorage

from effscale.search.storage import (
    SQLITE_MAX_WORKERS,
    check_workers,
    default_storage_url,
    open_storage,
    resolve_storage_url,
)


def test_default_is_sqlite_next_to_the_study(tmp_path):
    assert default_storage_url(tmp_path / "x" / "my_study.toml") == "sqlite:///my_study.db"
    location = resolve_storage_url("sqlite:///my_study.db", base_dir=tmp_path)
    assert location.kind == "sqlite" and location.path == (tmp_path / "my_study.db").resolve()
    assert location.url == f"sqlite:///{(tmp_path / 'my_study.db').resolve()}"


def test_absolute_and_journal_and_server_urls(tmp_path):
    absolute = resolve_storage_url(f"sqlite:///{tmp_path}/a.db", base_dir="/elsewhere")
    assert absolute.path == (tmp_path / "a.db").resolve()
    journal = resolve_storage_url("journal:///runs/s.journal", base_dir=tmp_path)
    assert journal.kind == "journal" and journal.path == (tmp_path / "runs" / "s.journal")
    server = resolve_storage_url("postgresql://user@db/effscale", base_dir=tmp_path)
    assert (server.kind, server.url, server.path) == ("rdb", "postgresql://user@db/effscale", None)


@pytest.mark.parametrize(
    "url, message",
    [
        ("results.db", "is not a storage URL"),
        ("redis://localhost", "unknown scheme 'redis'"),
        ("sqlite://", "has no file path"),
        ("sqlite:///:memory:", "cannot be shared by workers"),
    ],
)
def test_bad_urls(url, message, tmp_path):
    with pytest.raises(ValueError, match=f"study.storage: .*{message}"):
        resolve_storage_url(url, base_dir=tmp_path)


def test_open_storage_kinds(tmp_path):
    sqlite = open_storage(resolve_storage_url("sqlite:///a.db", base_dir=tmp_path))
    assert isinstance(sqlite, RDBStorage) and (tmp_path / "a.db").is_file()
    journal = open_storage(resolve_storage_url("journal:///sub/a.journal", base_dir=tmp_path))
    assert isinstance(journal, JournalStorage) and (tmp_path / "sub").is_dir()
    beating = open_storage(resolve_storage_url("sqlite:///b.db", base_dir=tmp_path), heartbeat=True)
    assert beating.heartbeat_interval == 60 and beating.grace_period == 180
    assert beating.get_heartbeat_stale_trial_callback() is not None


def test_sqlite_worker_limit(tmp_path):
    sqlite = resolve_storage_url("sqlite:///a.db", base_dir=tmp_path)
    check_workers(sqlite, SQLITE_MAX_WORKERS)
    with pytest.raises(
        ValueError,
        match=r"workers: SQLite is unreliable beyond 8 .* "
        r"storage = \"journal:///a.journal\"",
    ):
        check_workers(sqlite, SQLITE_MAX_WORKERS + 1)
    check_workers(resolve_storage_url("journal:///a.journal", base_dir=tmp_path), 32)


def test_a_schema_made_meanwhile_by_another_process_is_opened_not_fatal(tmp_path, monkeypatch):
    """Fault injection: the first creation finds a table that a concurrent opener has just made
    (what a search and a poller hit once in CI); the opening is retried and succeeds."""
    import sqlite3

    import optuna.storages
    from sqlalchemy.exc import OperationalError

    real = optuna.storages.RDBStorage
    calls = {"n": 0}

    def racing(url, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            real(url, **kwargs)  # the other process wins the race and makes the schema
            raise OperationalError(
                "CREATE TABLE study_directions",
                (),
                sqlite3.OperationalError("table study_directions already exists"),
            )
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    location = resolve_storage_url("sqlite:///race.db", base_dir=tmp_path)
    storage = open_storage(location)
    assert calls["n"] == 2 and storage.get_all_studies() == []


def test_other_storage_errors_are_not_retried(tmp_path, monkeypatch):
    import optuna.storages

    calls = {"n": 0}

    def broken(url, **kwargs):
        calls["n"] += 1
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(RuntimeError, match="disk I/O error"):
        open_storage(resolve_storage_url("sqlite:///x.db", base_dir=tmp_path))
    assert calls["n"] == 1
