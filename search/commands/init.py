"""``effscale init NAME [--from TEMPLATE]``: write a new study file, ``NAME.toml``, started from
one of the studies that ship with effscale (:mod:`..templates`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ParameterError
from ..output import shell_path
from ..templates import new_study_text, shipped_studies
from ..version import effscale_version

__all__ = ["FLAGS", "configure", "run"]

#: the library's parameters as this command's arguments
FLAGS = {"name": "NAME", "template": "--from"}


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale init``."""
    names = list(shipped_studies())
    parser.description = (
        "Write NAME.toml, a commented study file to start from: a copy of one of the studies "
        "that ship with effscale, named NAME. Refuses to replace an existing file unless "
        "--force."
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        help="the new study's name; the file is NAME.toml (NAME may include a folder)",
    )
    parser.add_argument(
        "--from",
        dest="template",
        default="quickstart",
        choices=names,
        metavar="TEMPLATE",
        help=f"the shipped study to start from: {', '.join(names)} (default: quickstart)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing NAME.toml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the study file and print how to run it; returns 0."""
    path = Path(args.name)
    if path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    name = path.stem
    if path.is_dir():
        raise ParameterError(f"name {args.name}", f"{path} is a folder", "give a file name")
    if path.exists() and not args.force:
        raise ParameterError(
            f"name {args.name}",
            f"{shell_path(path)} exists",
            "choose another NAME, or add --force to replace it",
        )
    if not path.parent.is_dir():
        raise ParameterError(
            f"name {args.name}",
            f"folder {shell_path(path.parent)} does not exist",
            "create it first, or give NAME in an existing folder",
        )
    text = new_study_text(template=args.template, name=name, path=path, version=effscale_version())
    with open(path, "w" if args.force else "x", encoding="utf-8") as handle:
        handle.write(text)
    shown = shell_path(path)
    print(f"wrote {shown} (study {name!r}, from {args.template}); run `effscale search {shown}`")
    return 0
