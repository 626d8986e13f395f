"""Output helpers shared by the commands: tables for people, JSON/CSV for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

__all__ = ["FORMATS", "add_format_argument", "print_records"]

FORMATS = ("table", "json", "csv")


def add_format_argument(
    parser, *, choices: Iterable[str] = FORMATS, default: str = "table"
) -> None:
    """Add ``--format`` with the given choices."""
    parser.add_argument(
        "--format",
        choices=tuple(choices),
        default=default,
        help=f"output format (default: {default})",
    )


def print_records(
    records: list[dict[str, Any]], fmt: str, *, title: str | None = None, stream=None
) -> None:
    """Print a list of flat dicts as a rich table, JSON (a list of objects) or CSV."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(json.dumps(records, indent=2) + "\n")
        return

    frame = pd.DataFrame.from_records(records)
    if fmt == "csv":
        frame.to_csv(stream, index=False)
        return

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(
            str(column), justify="right" if frame[column].dtype.kind in "if" else "left"
        )
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    Console(file=stream, width=200).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
