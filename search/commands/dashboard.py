"""``effscale dashboard STUDY.toml``: serve optuna-dashboard on the study's storage.

Before serving it writes the study's note (the study file and the effscale version) when the study
has none, and attaches the current plots to the study (unchanged plots are not stored again). It
serves through :class:`..dashboard.FeasibilityView`, so infeasible trials show as
infeasible whichever way their constraint was stored, and γ derived in solve mode is a parameter
there; the page also lists each trial's feasibility, MACs, cost ratio and AP over its seeds
first (:mod:`..dashboard_page`). Binds to 127.0.0.1 by default; the
dashboard has no authentication, so a non-loopback ``--host`` needs ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import sys

from ..dashboard import (
    DashboardServer,
    artifact_folder,
    artifact_store_for,
    check_host,
    make_app,
    prepare_study,
)
from ..study_file import load_study_file
from ..trials import load_study, open_existing_storage
from ..version import effscale_version

__all__ = ["configure", "run"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}; use 1024..65535, or 0 for any free port"
        )
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale dashboard``."""
    parser.description = (
        "Serve optuna-dashboard on the storage of STUDY.toml (never creating it). "
        "Writes the study note when missing and attaches the current plots first. "
        "The dashboard has no authentication: it binds to 127.0.0.1 unless "
        "--allow-remote."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="port to listen on (default: 8080; 0 picks a free one)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (anyone who reaches it can read, edit "
        "and delete the studies)",
    )
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="do not draw and attach the study's plots before serving",
    )
    parser.add_argument("--log-requests", action="store_true", help="print each HTTP request")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the study and serve until interrupted; returns 0 (Ctrl+C included)."""
    loopback = check_host(args.host, allow_remote=args.allow_remote)  # before anything else
    definition = load_study_file(args.study)
    study = load_study(definition, storage=args.storage)
    store = artifact_store_for(definition)
    # fails early without optuna-dashboard; serves the storage itself, not Optuna's cache of it
    app = make_app(
        open_existing_storage(definition, storage=args.storage),
        artifact_store=store,
        definition=definition,
    )

    prepare_study(
        study, definition, artifact_store=store, version=effscale_version(), plots=not args.no_plots
    )

    server = DashboardServer(app, host=args.host, port=args.port, log_requests=args.log_requests)
    with server:
        if not loopback:
            print(
                f"effscale dashboard: warning: serving {server.url} on a non-loopback address "
                "without authentication; anyone who reaches it can read, edit and delete the "
                "studies in this storage",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"study {definition.study.name!r} at {server.url} (artifacts in "
            f"{artifact_folder(definition)}; Ctrl+C stops)",
            flush=True,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0
