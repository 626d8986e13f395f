"""Output helpers shared by the commands: tables for people, JSON/CSV for scripts.

Tables fit the terminal they are printed to (:func:`terminal_width`); printed to a file or a
pipe, they keep their natural width. JSON is strict (:func:`json_text`): a number that is not
finite (NaN, infinity) is ``null``, never the bare ``NaN`` that strict parsers reject.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

__all__ = [
    "FORMATS",
    "add_format_argument",
    "print_records",
    "json_text",
    "plain_json",
    "terminal_width",
]

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
    """Print a list of flat dicts as a rich table (as wide as the terminal, at most), strict
    JSON (a list of objects; see :func:`json_text`) or CSV."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(json_text(records) + "\n")
        return

    frame = pd.DataFrame.from_records(records)
    if fmt == "csv":
        frame.to_csv(stream, index=False)
        return

    columns = [
        (str(column), frame[column].dtype.kind in "if", [_cell(v) for v in frame[column]])
        for column in frame.columns
    ]
    width = terminal_width(stream)
    if width is None:  # a file or a pipe: nothing to fit, so no row is wrapped
        parts = [list(range(len(columns)))]
        width = _natural_width(_table(columns, parts[0], title))
    else:
        width = max(width, 20)
        parts = _column_groups(columns, width, title)
    console = Console(file=stream, width=width)
    for number, part in enumerate(parts):
        shown = title if number == 0 else f"{title or 'table'} (continued)"
        console.print(_table(columns, part, shown))


def _table(columns: list[tuple[str, bool, list[str]]], part: list[int], title: str | None) -> Table:
    table = Table(title=title)
    for index in part:
        name, numeric, _ = columns[index]
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in range(len(columns[0][2]) if columns else 0):
        table.add_row(*(columns[index][2][row] for index in part))
    return table


def _natural_width(table: Table) -> int:
    return Console(file=io.StringIO(), width=100_000).measure(table).maximum


def _column_groups(
    columns: list[tuple[str, bool, list[str]]], width: int, title: str | None
) -> list[list[int]]:
    """The columns split into tables that each fit ``width``, the first column (the row's name
    or number) repeated in each; a column too wide on its own is folded by rich."""
    if not columns or _natural_width(_table(columns, list(range(len(columns))), title)) <= width:
        return [list(range(len(columns)))]
    groups: list[list[int]] = []
    current = [0]
    for index in range(1, len(columns)):
        if len(current) > 1 and _natural_width(_table(columns, current + [index], title)) > width:
            groups.append(current)
            current = [0]
        current.append(index)
    groups.append(current)
    return groups


def terminal_width(stream: Any) -> int | None:
    """The columns of the terminal ``stream`` writes to (``COLUMNS`` when set, as for
    :func:`shutil.get_terminal_size`), or ``None`` when it is not a terminal."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return None


def plain_json(value: Any) -> Any:
    """``value`` as JSON data: mappings and sequences copied, numbers that are not finite as
    ``None``, numpy and torch values as Python numbers and lists, anything else as its
    ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy and torch scalars and arrays
    if callable(tolist):
        return plain_json(tolist())
    return str(value)


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (:func:`plain_json`): ``null`` where a number is not
    finite, so that every JSON parser reads it."""
    return json.dumps(plain_json(value), indent=indent, allow_nan=False)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
