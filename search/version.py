"""The installed effscale version, as the package metadata gives it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["effscale_version"]


def effscale_version() -> str:
    """The installed effscale version (``0+unknown`` when it runs from a plain checkout)."""
    try:
        return version("effscale")
    except PackageNotFoundError:
        return "0+unknown"
