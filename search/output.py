"""Output folders: written atomically, replaced only when effscale wrote them, never over a
study's own files; and paths that cannot leave their folder.

Every command that writes a folder (``export``, ``report``, ``validate``) writes it through
:func:`atomic_directory`: into a temporary sibling folder, then renamed into place, so a reader
never sees half an output and a failure leaves the old folder as it was. The folder gets a
marker file, :data:`MARKER` (``.effscale-output.json``), naming the command and the study
fingerprint. ``--overwrite`` replaces a non-empty folder only when its marker names the same
command and study: a folder of the user's, another command's output or another study's is
refused. A folder that is, or holds, the study file, its storage or the study's own folder is
refused whatever it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .definition import StudyDefinition
from .errors import ParameterError
from .storage import resolve_storage_url
from .version import effscale_version

__all__ = [
    "MARKER",
    "display_path",
    "shell_path",
    "path_name",
    "safe_child",
    "read_marker",
    "study_files",
    "check_output_dir",
    "atomic_directory",
]

#: the file that marks a folder as an effscale output
MARKER = ".effscale-output.json"


def display_path(path: str | Path) -> str:
    """``path`` as a user should paste it: relative to the current folder when inside it,
    else absolute."""
    resolved = Path(path).resolve()
    try:
        relative = resolved.relative_to(Path.cwd())
    except ValueError:
        return str(resolved)
    return str(relative) if str(relative) != "." else "."


def shell_path(path: str | Path) -> str:
    """:func:`display_path`, quoted for a POSIX shell where needed, for hints that print a
    command to paste (``effscale search 'my studies/a.toml'``)."""
    return shlex.quote(display_path(path))


def path_name(text: str, *, default: str = "study") -> str:
    """``text`` (a study name, say) as one harmless file name: every run of characters other
    than letters, digits, ``_``, ``-`` and ``.`` becomes ``-``, leading and trailing dots and
    dashes go (no ``..``, no hidden file), at most 100 characters; ``default`` when nothing is
    left. A study named ``../../../X`` exports to ``exports/X-trial3``, inside ``exports/``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-")[:100].strip(".-")
    return name or default


def safe_child(folder: str | Path, name: str | Path, *, what: str = "path") -> Path:
    """``folder / name``, refusing a ``name`` that could leave ``folder``: empty names, NUL
    bytes, absolute paths (POSIX or Windows: drive letters, UNC, ``~``), ``:``, empty or ``..``
    parts, the folder itself, and symbolic links that resolve outside it. Raises
    :class:`.ParameterError` naming ``what`` and the name."""
    text = str(name)
    where = f"{what} {text!r}"

    def refuse(problem: str) -> ParameterError:
        return ParameterError(where, problem, f"give a relative path inside {folder}")

    if not text.strip() or "\x00" in text:
        raise refuse(f"is empty or not a plain name, which would leave {folder}")
    windows = text.replace("\\", "/")
    if (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or PureWindowsPath(text).drive
        or text.startswith(("/", "\\", "~"))
        or ":" in text
    ):
        raise refuse(f"is absolute, which would leave {folder}")
    parts = windows.split("/")
    if any(part == "" for part in parts) or ".." in parts:
        raise refuse(f"has an empty or '..' part, which would leave {folder}")
    base = Path(folder).resolve()
    target = (base / PurePosixPath(windows)).resolve()
    if target == base:
        raise refuse(f"names {folder} itself, not a file inside it: it would leave nothing")
    if base not in target.parents:
        raise refuse(f"resolves to {target}, outside {folder} (a symbolic link?)")
    return Path(folder) / PurePosixPath(windows)


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of an effscale output folder (``command``, ``study``, ``fingerprint``,
    ``created``, ``effscale_version``), or ``None`` when it holds none or an unreadable one."""
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("command"), str) else None


def study_files(definition: StudyDefinition) -> tuple[Path, ...]:
    """What an output folder may never be or hold: the study's folder, the study file and its
    storage file (when the storage is a file)."""
    location = resolve_storage_url(definition.storage_url, base_dir=definition.folder)
    files = [definition.folder, definition.path]
    if location.path is not None:
        files.append(location.path)
    return tuple(files)


def _contains(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    out: str | Path,
    *,
    command: str,
    study: StudyDefinition | None = None,
    overwrite: bool = False,
    parameter: str = "out",
) -> Path:
    """Refuse ``out`` unless ``command`` may write it for ``study``; returns it absolute.

    Refused: a file; a file-system root; a folder that is or holds one of the study's files
    (:func:`study_files`); a non-empty folder without ``overwrite``; and, with ``overwrite``, a
    non-empty folder whose :data:`MARKER` does not name ``command``, the study's name and its
    fingerprint (``None`` for no study). Errors are :class:`.ParameterError` naming
    ``parameter``.
    """
    fingerprint = None if study is None else study.fingerprint()
    protect: Iterable[Path] = () if study is None else study_files(study)
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ParameterError(parameter, f"{out} is a file", "give a folder path")
    if out.parent == out:
        raise ParameterError(parameter, f"{out} is a file-system root", "give a folder below it")
    for item in protect:
        guarded = Path(item).resolve()
        if _contains(out, guarded):
            what = "is" if out == guarded else "holds"
            raise ParameterError(
                parameter,
                f"{out} {what} the study's own {guarded.name} ({guarded}); replacing it would "
                "delete the study",
                "choose a new folder for the output",
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ParameterError(
                parameter,
                f"{out} exists and is not empty",
                "pass --overwrite to replace it or choose another folder",
            )
        marker = read_marker(out)
        if marker is None:
            raise ParameterError(
                parameter,
                f"{out} holds no {MARKER}, so it is not an earlier effscale {command} output",
                "--overwrite replaces only those; choose another folder",
            )
        name = None if study is None else study.study.name
        if (
            marker.get("command") != command
            or marker.get("fingerprint") != fingerprint
            or marker.get("study") != name  # two studies may share one definition
        ):
            made = f"effscale {marker.get('command')} of study {marker.get('study')!r}"
            raise ParameterError(
                parameter,
                f"{out} was written by {made} (fingerprint {marker.get('fingerprint')}), not by "
                f"this effscale {command}",
                "--overwrite replaces only a command's own output; choose another folder",
            )
    return out


@contextlib.contextmanager
def atomic_directory(
    out: str | Path,
    *,
    command: str,
    study: StudyDefinition | None = None,
    overwrite: bool = False,
    parameter: str = "out",
) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``out`` holding the :data:`MARKER` (``command``,
    the study's name and fingerprint); on success it replaces ``out`` by rename.

    On any error the temporary folder is removed and ``out`` is left as it was. ``out`` is
    checked by :func:`check_output_dir` before and again just before the rename.
    """
    rules: dict[str, Any] = {
        "command": command,
        "study": study,
        "overwrite": overwrite,
        "parameter": parameter,
    }
    out = check_output_dir(out, **rules)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        marker = {
            "command": command,
            "study": None if study is None else study.study.name,
            "fingerprint": None if study is None else study.fingerprint(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "effscale_version": effscale_version(),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        yield tmp
        check_output_dir(out, **rules)  # appeared since?
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
