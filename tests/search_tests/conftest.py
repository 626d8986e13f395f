"""Helpers for the search tests: study files written into ``tmp_path``, so that no storage or
generated data lands in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def edit_study(text: str, changes: dict[str, str]) -> str:
    """Set ``"section.key"`` to the TOML value text for each change: an existing ``key = ...``
    line of that section is replaced, otherwise the line is added at the section's top."""
    for dotted, value in changes.items():
        section, key = dotted.rsplit(".", 1)
        header = re.search(rf"(?m)^\[{re.escape(section)}\]\n", text)
        assert header, f"no [{section}] in the study text"
        end = re.compile(r"(?m)^\[").search(text, header.end())
        stop = end.start() if end else len(text)
        body = text[header.end() : stop]
        body, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", body, count=1)
        if not count:
            body = f"{key} = {value}\n" + body
        text = text[: header.end()] + body + text[stop:]
    return text


def drop_section(text: str, section: str) -> str:
    """Remove ``[section]`` and its lines."""
    header = re.search(rf"(?m)^\[{re.escape(section)}\]\n", text)
    assert header, f"no [{section}] in the study text"
    end = re.compile(r"(?m)^\[").search(text, header.end())
    return text[: header.start()] + (text[end.start() :] if end else "")


def as_training(
    text: str,
    data: str = "generate = {train = 8, val = 4, image_size = 64}",
    train: str = "epochs = 1",
) -> str:
    """The study with ``objective.kind = "train"``, the ``[train]`` lines and ``[data]`` lines."""
    text = drop_section(edit_study(text, {"objective.kind": '"train"'}), "objective.surrogate")
    return text + f"\n[train]\n{train}\n\n[data]\n{data}\n"


#: the surrogate study as the tests of the search machinery take it: the formula cost (under which
#: the analytic optimum is exact) and one seed (one evaluation per trial). Tests of measured cost
#: and of replicates set these keys themselves.
SURROGATE_TEST_SETTINGS = {"constraint.kind": '"formula"', "study.seeds": "[0]"}


@pytest.fixture
def surrogate_study(tmp_path: Path):
    """A function writing ``studies/surrogate_compound.toml``, edited by
    :data:`SURROGATE_TEST_SETTINGS` and then ``changes``, into ``tmp_path``."""

    def write(
        changes: dict[str, str] | None = None, *, name: str = "study.toml", append: str = ""
    ) -> Path:
        text = edit_study(
            (STUDIES / "surrogate_compound.toml").read_text(),
            {**SURROGATE_TEST_SETTINGS, **(changes or {})},
        )
        text += append
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
