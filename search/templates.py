"""The study files that ship with effscale, and new study files started from them (``effscale
init``).

The shipped studies are the repository's top-level ``studies/*.toml``. They install as the
package data of ``effscale.studies`` (a folder of TOML files, not a Python package; setuptools'
``package-dir`` maps it to ``studies/``), so that ``pip install effscale`` brings them.
:func:`shipped_studies` reads the folders of that namespace package's ``__path__``, which are
``site-packages/effscale/studies`` in an installed wheel and ``studies/`` in an editable install
(``importlib.resources`` cannot read an editable namespace package: setuptools adds a path-hook
entry that is not a folder).

:func:`new_study_text` turns one into a new study: its ``[study] name`` set, a header saying
where it came from and how to run it, the template's own comments kept (the commands in them
pointing at the new file), and the result checked by the study-file reader before anything is
written.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import tomli_w

from .errors import ParameterError
from .output import shell_path
from .study_file import parse_study_text

__all__ = ["STUDIES_PACKAGE", "shipped_studies", "shipped_study_text", "new_study_text"]

#: the package whose data are the shipped study files
STUDIES_PACKAGE = "effscale.studies"

_STUDY_HEADER = re.compile(r"(?m)^\[study\][ \t]*(#.*)?$")
_SECTION = re.compile(r"(?m)^\[")
_NAME_LINE = re.compile(r'(?m)^(name[ \t]*=[ \t]*)("(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\')')


def shipped_studies() -> dict[str, Path]:
    """The shipped study files by name (the file's stem: ``quickstart``, ``surrogate_compound``,
    ...), sorted."""
    package = importlib.import_module(STUDIES_PACKAGE)
    found: dict[str, Path] = {}
    for entry in package.__path__:
        folder = Path(entry)
        if folder.is_dir():
            for path in folder.glob("*.toml"):
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def shipped_study_text(template: str) -> str:
    """The text of the shipped study ``template``; a :class:`.ParameterError` naming
    ``template`` and the choices when there is none of that name."""
    studies = shipped_studies()
    if template not in studies:
        raise ParameterError(
            f"template {template}",
            "is not a shipped study",
            f"choose one of {', '.join(studies)}",
        )
    return studies[template].read_text(encoding="utf-8")


def new_study_text(*, template: str, name: str, path: str | Path, version: str) -> str:
    """The text of a new study named ``name``, to be written at ``path``, started from the
    shipped study ``template`` by effscale ``version``; checked as a study file (a
    :class:`.study_file.StudyFileError` if it does not read as one)."""
    if not name.strip():
        raise ParameterError("name", "is empty", "give the new study a name, e.g. my_study")
    text = shipped_study_text(template)
    header = _STUDY_HEADER.search(text)
    if header is None:
        raise ParameterError(f"template {template}", "has no [study] table", "choose another")
    end = _SECTION.search(text, header.end())
    stop = len(text) if end is None else end.start()
    section = text[header.end() : stop]
    value = tomli_w.dumps({"name": name}).split("=", 1)[1].strip()
    section, found = _NAME_LINE.subn(lambda m: m.group(1) + value, section, count=1)
    if not found:
        section = f"\nname = {value}" + section
    text = text[: header.end()] + section + text[stop:]
    shown = shell_path(path)
    text = text.replace(f"studies/{template}.toml", shown)
    intro = (
        f"# Study {name!r}, started by `effscale init` from effscale {version}'s "
        f"{template} study.\n"
        f"# Run it with `effscale search {shown}`, see it with `effscale status {shown}`;\n"
        "# every key is checked when the file is read. The template's notes follow.\n#\n"
    )
    text = intro + text
    parse_study_text(text, path=path)
    return text
