"""The ``effscale`` command line: one module per command under :mod:`.commands`.

Each command module has ``configure(parser)``, which adds its arguments and sets ``func=run``
where ``run(args) -> int`` returns the exit code, and may map the library's parameter names to
its flags in ``FLAGS`` (by default ``top_k`` is ``--top-k``). Only the module of the command
being run is imported, so that ``effscale --help`` starts without torch.

Errors that users can fix (:class:`ValueError`, :class:`FileNotFoundError`, ...) are printed as
one line, ``effscale CMD: error: ...``, never a traceback. A :class:`.errors.ParameterError`
is shown with the command's flag in place of the parameter it names. A run stopped by a signal
or a full disk (:class:`.errors.RunStopped`) prints its one line and exits with its code
(``128 + signal``, 1 for a full disk); a full disk anywhere else (``ENOSPC``) and input nested
too deeply to read (``RecursionError``: a TOML or JSON file of thousands of nested brackets)
are one line too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import NoReturn

from .errors import ParameterError, RunStopped
from .version import effscale_version

__all__ = ["COMMANDS", "main", "build_parser", "flag_message"]

#: each command: its module under :mod:`.commands` and its line in ``effscale --help``
COMMANDS: dict[str, tuple[str, str]] = {
    "flops": ("flops", "count params, MACs and activations of presets or a spec"),
    "make-data": ("make_data", "write a synthetic COCO-format shapes dataset"),
    "train": ("train", "train one detector on a COCO-format dataset and report COCO AP"),
    "evaluate": ("evaluate", "COCO AP of a checkpoint on a dataset split"),
    "init": ("init", "write a commented study file to start from (quickstart, ...)"),
    "search": ("search", "run or resume a scaling search from a study file"),
    "confirm": ("confirm", "retrain the best points on more seeds and show the region"),
    "status": ("status", "show the trials, best point and Pareto front of a study"),
    "export": ("export", "write the D0..D7-style family of a trial or of given coefficients"),
    "validate": ("validate", "check the found scaling against other scalings at matched MACs"),
    "report": ("report", "write plots and a Markdown report of a study"),
    "dashboard": ("dashboard", "watch a study in optuna-dashboard"),
    "storage": ("storage", "check or repair a study's storage (torn journals, dead workers)"),
    "import": ("import_effdet", "turn an effdet checkpoint into an effscale config and weights"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``effscale CMD: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line."""


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f".commands.{COMMANDS[name][0]}", __package__)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Every command is listed; only ``command``'s arguments are added
    (by importing its module), so that ``effscale --help`` imports none."""
    parser = _Parser(
        prog="effscale",
        description="Find how to scale EfficientDet for your data and compute budget.",
    )
    parser.add_argument("--version", action="version", version=f"effscale {effscale_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, line) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=line, description=line)
        if command == name:
            _command_module(name).configure(command_parser)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def flag_message(error: ParameterError, flags: Mapping[str, str]) -> str:
    """``error``'s message with its parameter, and every parameter written ```like_this``` in
    it, shown as the command's flag (``flags``, else ``--like-this``). Study-file keys
    (``constraint.mode``) stay as they are."""

    def flag(name: str) -> str:
        if "." in name or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            return name
        return flags.get(name, "--" + name.replace("_", "-"))

    head, _, rest = error.parameter.partition(" ")
    shown = flag(head) + (f" {rest}" if rest else "")
    detail = error.problem if error.fix is None else f"{error.problem}; {error.fix}"
    detail = re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: flag(m.group(1)), detail)
    return f"{shown}: {detail}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``effscale``; returns the process exit code."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    command = _chosen_command(args_list)
    parser = build_parser(command)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RunStopped as exc:
        print(f"effscale {args.command}: {_pasteable(_one_line(exc), args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("effscale: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print(
            f"effscale {args.command}: error: an input file is nested too deeply to read "
            "(thousands of nested brackets); check the study, config or annotation file",
            file=sys.stderr,
        )
        return 2
    except ParameterError as exc:
        flags = getattr(_command_module(args.command), "FLAGS", {})
        print(
            f"effscale {args.command}: error: "
            f"{_pasteable(_one_line_text(flag_message(exc, flags)), args)}",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, UserError) as exc:
        print(
            f"effscale {args.command}: error: {_pasteable(_one_line(exc), args)}", file=sys.stderr
        )
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"effscale {args.command}: error: disk full{where} ({exc.strerror}); free space "
            "and run the command again",
            file=sys.stderr,
        )
        return 1


def _pasteable(text: str, args: argparse.Namespace) -> str:
    """``text`` with the placeholder ``STUDY.toml`` of a hinted command (library code that
    raises the error does not know the study file) replaced by the command's own study file,
    quoted for the shell, so that the hint works when pasted."""
    study = getattr(args, "study", None)
    if not isinstance(study, str) or not study:
        return text
    return re.sub(r"(`effscale [^`]*?)STUDY\.toml", lambda m: m.group(1) + shlex.quote(study), text)


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return _one_line_text(text)


if __name__ == "__main__":
    sys.exit(main())
