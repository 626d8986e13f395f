"""The typed definition: the fingerprint comes from the typed sections (so a replaced definition
gets its own), and rendering a definition back to TOML reads back to an equal one."""

from __future__ import annotations

import dataclasses

import pytest

from effscale.search.definition import render_study_text
from effscale.search.errors import ParameterError
from effscale.search.study_file import load_study_file, parse_study_text
from tests.search_tests.conftest import STUDIES

SHIPPED = sorted(STUDIES.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_rendered_study_reads_back_equal_with_the_same_fingerprint(path):
    d = load_study_file(path)
    again = parse_study_text(render_study_text(d), path=d.path)
    assert again == d and again.fingerprint() == d.fingerprint()


def test_replace_changes_the_fingerprint_and_the_text():
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    more = d.replace(study=dataclasses.replace(d.study, n_trials=7))
    assert more.study.n_trials == 7 and more.fingerprint() == d.fingerprint()  # not a meaning
    steeper = d.replace(constraint=dataclasses.replace(d.constraint, target=2.2))
    assert steeper.fingerprint() != d.fingerprint()
    assert parse_study_text(steeper.text, path=d.path) == steeper
    # comments and layout of the file do not move the fingerprint; values do
    text = (STUDIES / "surrogate_compound.toml").read_text()
    assert parse_study_text("# note\n" + text, path=d.path).fingerprint() == d.fingerprint()


def test_replace_checks_the_rules_between_sections():
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    with pytest.raises(ParameterError, match="constraint.mode: band with sampler"):
        d.replace(
            study=dataclasses.replace(d.study, sampler="gp"),
            constraint=dataclasses.replace(d.constraint, mode="band"),
        )
