"""Markdown for reports, exports and notes: tables and code fences."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["code_fence", "markdown_table", "cell"]


def code_fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in ``text`` (at least three)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def cell(value: Any, digits: int = 4) -> str:
    """One table cell: ``–`` for a missing or non-finite number, yes/no for booleans, floats
    with ``digits`` decimals, and ``|`` escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value).replace("|", "\\|")


def _plain_cell(_key: str, value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    headers: Mapping[str, str] | None = None,
    format_cell: Callable[[str, Any], str] | None = None,
) -> str:
    """A GitHub Markdown table of ``rows`` (columns in the first row's order; ``headers`` maps a
    key to its column title; ``format_cell(key, value)`` formats a cell, by default 4
    significant digits for floats and nothing for ``None``). Numeric columns are
    right-aligned."""
    if not rows:
        return ""
    keys = list(rows[0])
    titles = headers or {}
    fmt = format_cell or _plain_cell
    numeric = [
        all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
        for k in keys
    ]
    lines = [
        "| " + " | ".join(titles.get(k, k) for k in keys) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt(k, row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"
