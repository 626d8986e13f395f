"""argparse ``type=`` converters shared by the commands; each error names the fix."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "positive_int",
    "nonnegative_int",
    "positive_int_or_auto",
    "bounded_int",
    "bounded_float",
]


def _integer_at_least(minimum: int, what: str, rule: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}; use {rule}")
        return value

    return convert


def positive_int(what: str = "count") -> Callable[[str], int]:
    """A converter accepting integers >= 1; ``what`` names the value in the error."""
    return _integer_at_least(1, what, "a positive integer")


def nonnegative_int(what: str = "count") -> Callable[[str], int]:
    """A converter accepting integers >= 0; ``what`` names the value in the error."""
    return _integer_at_least(0, what, "an integer >= 0")


def positive_int_or_auto(what: str = "count") -> Callable[[str], int | str]:
    """A converter accepting ``auto`` (returned as the string) or integers >= 1; ``what`` names
    the value in the error."""
    number = _integer_at_least(1, what, "a positive integer or auto")

    def convert(text: str) -> int | str:
        return "auto" if text.strip().lower() == "auto" else number(text)

    return convert


def bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    """A converter accepting integers in ``[low, high]``; ``what`` names the value."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}; use an integer from {low:,} to {high:,}"
            )
        return value

    return convert


def bounded_float(what: str, low: float, high: float) -> Callable[[str], float]:
    """A converter accepting finite numbers in ``(low, high]`` (never ``inf`` or ``nan``);
    ``what`` names the value."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low < value <= high):
            top = f"{high:,.0f}" if float(high).is_integer() else f"{high:g}"
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}; use a finite number above {low:g}, at most {top}"
            )
        return value

    return convert
