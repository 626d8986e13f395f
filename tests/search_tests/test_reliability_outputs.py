"""Issue #18, point 1: no command deletes or rewrites what it did not write.

Each case of the issue, run through the command line on a finished surrogate study:

* ``report --out <the study's folder> --overwrite`` (before: deleted the study file and its
  SQLite database), ``--out`` a folder above it, and a symbolic link to it;
* ``report --overwrite`` onto a folder of the user's (before: deleted a file and a subfolder);
* ``export --overwrite`` onto a folder holding only ``manifest.json`` = ``{}`` next to a file of
  the user's (before: wiped it), and onto another command's or another study's output;
* ``storage repair --storage journal:///study.toml`` (before: "repaired" the study file into 0
  bytes), and the same with ``check``, with an SQLite URL, and with a folder;
* ``make-data DIR --overwrite`` onto a dataset that ``make-data`` did not write.

Every refusal is one line (exit 2) and every byte stays as it was. The positive controls:
``--overwrite`` replaces the command's own earlier output.

    python -m pytest tests/search_tests/test_reliability_outputs.py -s   # prints the figure
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from effscale.search.cli import main
from effscale.search.output import MARKER
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file

from .conftest import STUDIES, edit_study


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (folders as empty entries)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A finished 6-trial surrogate study (SQLite) in a folder of its own, inside a parent
    folder that holds nothing else."""
    folder = tmp_path_factory.mktemp("outputs") / "project"
    folder.mkdir()
    path = folder / "study.toml"
    path.write_text(
        edit_study(
            (STUDIES / "surrogate_compound.toml").read_text(),
            {"study.n_trials": "6", "constraint.kind": '"formula"'},
        )
    )
    run_study(load_study_file(path), quiet=True)
    return path


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """Run ``argv``: exit 2 with one line holding every needle; returns the line."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _figure(capsys, case: str, refused: int) -> None:
    with capsys.disabled():
        print(
            f"\nFIGURE outputs, {case}: {refused} writes refused in one line (exit 2), "
            "bytes changed 0"
        )


def test_report_never_replaces_the_study_folder_or_a_folder_above_it(study, tmp_path, capsys):
    project = study.parent
    before = _snapshot(project.parent)
    link = tmp_path / "link"
    link.symlink_to(project, target_is_directory=True)
    for out in (project, project.parent, link):
        _refused(
            capsys,
            ["report", str(study), "--out", str(out), "--overwrite"],
            "replacing it would delete the study",
        )
    assert _snapshot(project.parent) == before
    _figure(capsys, "report over the study's folder, a folder above it, a link to it", 3)


def test_report_overwrite_leaves_a_users_folder_alone(study, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    (mine / "sub" / "data.csv").write_text("1,2")
    before = _snapshot(mine)
    _refused(
        capsys,
        ["report", str(study), "--out", str(mine), "--overwrite"],
        f"holds no {MARKER}",
    )
    assert _snapshot(mine) == before
    own = tmp_path / "report"  # the positive control: its own report is replaced
    assert main(["report", str(study), "--out", str(own)]) == 0
    (own / "report.md").write_text("stale")
    assert main(["report", str(study), "--out", str(own), "--overwrite"]) == 0
    assert (own / "report.md").read_text() != "stale"
    _figure(capsys, "report --overwrite over a user's folder", 1)


def test_export_overwrite_needs_its_own_marker_not_a_manifest(study, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text("{}")
    (fake / "thesis.tex").write_text("mine")
    before = _snapshot(fake)
    _refused(
        capsys,
        ["export", str(study), "--phi", "0-2", "--out", str(fake), "--overwrite"],
        f"holds no {MARKER}",
    )
    assert _snapshot(fake) == before

    report = tmp_path / "report"  # another command's output
    assert main(["report", str(study), "--out", str(report)]) == 0
    before = _snapshot(report)
    _refused(
        capsys,
        ["export", str(study), "--phi", "0-2", "--out", str(report), "--overwrite"],
        "was written by effscale report",
    )
    assert _snapshot(report) == before

    other = study.parent.parent / "other"  # another study's export
    other.mkdir(exist_ok=True)
    other_study = other / "study.toml"
    other_study.write_text(study.read_text().replace("surrogate-compound", "another-study"))
    run_study(load_study_file(other_study), quiet=True)
    theirs = tmp_path / "theirs"
    assert main(["export", str(other_study), "--phi", "0-2", "--out", str(theirs)]) == 0
    before = _snapshot(theirs)
    _refused(
        capsys,
        ["export", str(study), "--phi", "0-2", "--out", str(theirs), "--overwrite"],
        "of study 'another-study'",
    )
    assert _snapshot(theirs) == before

    own = tmp_path / "family"  # the positive control
    assert main(["export", str(study), "--phi", "0-1", "--out", str(own)]) == 0
    assert main(["export", str(study), "--phi", "0-2", "--out", str(own), "--overwrite"]) == 0
    assert set(json.loads((own / "manifest.json").read_text())["members"]) == {"d0", "d1", "d2"}
    _figure(capsys, "export --overwrite over manifest.json {}, a report, another study's export", 3)


@pytest.mark.parametrize("action", ["repair", "check"])
def test_storage_commands_refuse_a_path_that_holds_no_journal(study, capsys, action):
    project = study.parent
    before = _snapshot(project)
    cases = (
        ("journal:///study.toml", "is not a journal file"),
        ("sqlite:///study.toml", "is not an SQLite database"),
        (f"journal:///{project}", "is a folder, not a journal file"),
        ("journal:///study.db", "is not a journal file"),
    )
    for url, needle in cases:
        _refused(capsys, ["storage", action, str(study), "--storage", url], needle)
    assert _snapshot(project) == before
    assert not list(project.glob("*.bak*"))
    _figure(capsys, f"storage {action}", len(cases))


def test_make_data_overwrite_only_replaces_a_synthetic_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["make-data", str(data), "--train", "2", "--val", "2", "--image-size", "64"]) == 0
    assert (
        main(
            ["make-data", str(data), "--train", "3", "--val", "2", "--image-size", "64"]
            + ["--overwrite"]
        )
        == 0
    )  # its own dataset: replaced
    real = tmp_path / "coco"
    for split in ("train", "val"):
        (real / split / "images").mkdir(parents=True)
        (real / split / "images" / "0001.jpg").write_bytes(b"\xff\xd8 my photo")
        (real / split / "instances.json").write_text(
            json.dumps({"info": {"description": "my labels"}, "images": [], "annotations": []})
        )
    before = _snapshot(real)
    _refused(
        capsys,
        ["make-data", str(real), "--train", "2", "--val", "2", "--overwrite"],
        "not a dataset written by effscale make-data",
    )
    assert _snapshot(real) == before
    _figure(capsys, "make-data --overwrite over a dataset of the user's", 1)
