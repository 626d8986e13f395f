"""The ``effscale`` command line: one module per command under :mod:`search.commands`.

Every command module exposes ``register(subparsers)`` which adds its parser and sets
``func=run`` where ``run(args) -> int`` returns the exit code. Errors that users can fix
(:class:`ValueError`, :class:`FileNotFoundError`, ...) are printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser", "COMMANDS"]

#: command modules, in the order ``effscale --help`` lists them
COMMANDS = (
    "flops",
    "make_data",
    "train",
    "evaluate",
    "search",
    "status",
    "export",
    "validate",
    "report",
    "dashboard",
    "storage",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``effscale CMD: error: ...``)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available command registered."""
    parser = _Parser(
        prog="effscale",
        description="Find how to scale EfficientDet for your data and compute budget.",
    )
    parser.add_argument("--version", action="version", version=f"effscale {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"search.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet in this checkout
            if exc.name == f"search.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("effscale")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``effscale``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("effscale: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, UserError) as exc:
        print(f"effscale {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
