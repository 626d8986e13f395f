"""Issue #18, point 5: every storage URL problem is one line within 10 s, ``postgresql://``
works with the driver effscale depends on (psycopg 3), and Ray is reachable only where it
should be.

Before issue #18 each bad URL below ended in a traceback (a refused port, ``mysql://``, an
SQLite path that is a folder or the study file, a journal that is a folder), ``postgresql://``
raised ``ImportError`` (SQLAlchemy 2.1 picks psycopg 3; only psycopg2 was installed),
``--backend ray --address 127.0.0.1:1`` retried for minutes, and a local Ray listened on every
interface.

The PostgreSQL cases need a server: ``EFFSCALE_TEST_POSTGRES_URL`` (``.ci/run`` starts one).

    python -m pytest tests/search_tests/test_reliability_urls.py -s   # prints the figures
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest

from effscale.search.cli import main

POSTGRES_URL = os.environ.get("EFFSCALE_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="EFFSCALE_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against "
    "(.ci/run starts one)",
)
#: (case, URL, what the one line says); the password ``secret`` must never be shown
BAD_URLS = [
    ("refused port", "postgresql://effscale:secret@127.0.0.1:1/db", "Connection refused"),
    ("psycopg2, refused port", "postgresql+psycopg2://u:secret@127.0.0.1:1/db", "refused"),
    ("host that does not resolve", "postgresql://u@nonexistent.invalid/db", "nonexistent"),
    ("mysql, no driver", "mysql://x", "needs the Python driver 'mysqldb'"),
    ("pymysql, no driver", "mysql+pymysql://u:secret@h/db", "needs the Python driver 'pymysql'"),
    ("unknown scheme", "foo://x", "unknown scheme 'foo'"),
    ("not a URL", "study.db", "is not a storage URL"),
    ("sqlite, a folder", "sqlite:///sub", "is a folder, not an SQLite database"),
    ("sqlite, the study file", "sqlite:///study.toml", "is not an SQLite database"),
    ("sqlite below a file", "sqlite:///study.toml/x.db", "is a file, not a folder"),
    ("sqlite in memory", "sqlite:///:memory:", "in-memory database"),
    ("journal, a folder", "journal:///sub", "is a folder, not a journal file"),
    ("journal, the study file", "journal:///study.toml", "is not a journal file"),
]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_line(capsys, argv: list[str]) -> tuple[int, str, float]:
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return code, lines[0], seconds


def test_every_bad_storage_url_is_one_line_within_10_s(surrogate_study, capsys):
    # the commands' modules (torch, optuna) are imported first: the clock is for the URL
    import effscale.search.commands.search
    import effscale.search.commands.status
    import effscale.search.commands.storage  # noqa: F401

    path = surrogate_study({"study.n_trials": "2"})
    (path.parent / "sub").mkdir()
    before = _listing(path.parent)
    slowest = 0.0
    for command in ("search", "status", "storage"):
        for case, url, needle in BAD_URLS:
            argv = {
                "search": ["search", str(path), "--quiet"],
                "status": ["status", str(path)],
                "storage": ["storage", "check", str(path)],
            }[command] + ["--storage", url]
            code, line, seconds = _one_line(capsys, argv)
            slowest = max(slowest, seconds)
            assert code == 2, (case, line)
            assert line.startswith(f"effscale {command}: error: ") and "study.storage" in line
            if command == "search" or "study file" in case or "folder" in case:
                assert needle in line, (case, line)
            assert "secret" not in line, line
            assert seconds < 10, (case, seconds)
    assert _listing(path.parent) == before  # no database, journal or lock appeared
    with capsys.disabled():
        print(
            f"\nFIGURE urls: {len(BAD_URLS)} bad storage URLs x 3 commands (search, status, "
            f"storage check): {3 * len(BAD_URLS)}/{3 * len(BAD_URLS)} one line, exit 2, "
            f"slowest {slowest:.2f} s, files created 0, passwords shown 0"
        )


@needs_postgres
def test_postgresql_url_uses_psycopg3(surrogate_study, capsys):
    assert POSTGRES_URL is not None
    plain = "postgresql://" + POSTGRES_URL.split("://", 1)[1]  # SQLAlchemy 2.1: psycopg 3
    name = f"psycopg3-{uuid.uuid4().hex[:8]}"
    path = surrogate_study({"study.n_trials": "3", "study.name": f'"{name}"'})
    try:
        assert main(["search", str(path), "--quiet", "--storage", plain]) == 0
        study = optuna.load_study(study_name=name, storage=plain)
        assert len(study.trials) == 3
        assert study._storage._backend.engine.dialect.driver == "psycopg"
        # the server is there, the password is not: one line, the password masked
        user, rest = POSTGRES_URL.split("://", 1)[1].split("@", 1)
        wrong = f"postgresql://{user.split(':')[0]}:not-it@{rest}"
        code, line, seconds = _one_line(capsys, ["status", str(path), "--storage", wrong])
        assert code == 2 and "password authentication failed" in line and "not-it" not in line
        assert seconds < 10
        port = rest.split("/", 1)[0].rsplit(":", 1)[0] + ":1"
        code, line, seconds = _one_line(
            capsys, ["status", str(path), "--storage", f"postgresql://{user}@{port}/db"]
        )
        assert code == 2 and "refused" in line and seconds < 10
    finally:
        optuna.delete_study(study_name=name, storage=plain)


def test_an_unreachable_ray_address_is_one_line_within_10_s(surrogate_study, capsys):
    pytest.importorskip("ray")
    import effscale.search.runners.ray_driver  # noqa: F401 - its import is not the wait

    path = surrogate_study({"study.n_trials": "2"})
    for address, needle in (
        ("127.0.0.1:1", "no Ray cluster answers at '127.0.0.1:1'"),
        ("nonsense", "is not auto or HOST:PORT"),
    ):
        code, line, seconds = _one_line(
            capsys, ["search", str(path), "--quiet", "--backend", "ray", "--address", address]
        )
        assert code == 2 and line.startswith("effscale search: error: --address: "), line
        assert needle in line and seconds < 10, (line, seconds)
    assert not (path.parent / "study.db").exists()
    with capsys.disabled():
        print(f"\nFIGURE urls: --address 127.0.0.1:1 refused in one line in {seconds:.2f} s")


#: starts a local Ray the way effscale does and prints the listening addresses of its processes
RAY_LISTENERS = textwrap.dedent("""
    import ray
    import psutil  # after ray, which brings its own copy
    from effscale.search.runners import ray_driver
    from effscale.search.study_file import load_study_file
    import sys
    options = ray_driver.resolve_options(load_study_file(sys.argv[1]))
    assert ray_driver._connect(options)
    try:
        pids = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in pids:
                print(c.laddr.ip, c.laddr.port)
    finally:
        ray.shutdown()
""")


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(surrogate_study, capsys):
    pytest.importorskip("ray")
    path = surrogate_study({"study.n_trials": "2"})
    result = subprocess.run(
        [sys.executable, "-c", RAY_LISTENERS, str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=path.parent,
    )
    assert result.returncode == 0, result.stderr
    listeners = [line.split() for line in result.stdout.splitlines() if line.strip()]
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    outside = [f"{ip}:{port}" for ip, port in listeners if ip not in loopback]
    with capsys.disabled():
        print(
            f"\nFIGURE ray: a local Ray started by effscale: {len(listeners)} listening "
            f"sockets, {len(outside)} outside loopback"
        )
    assert listeners and not outside, outside
