"""Reliability, bad data (issue 18, case 4): ``effscale search`` and ``effscale train`` check
both splits before the first trial. Each bad case ends in one line naming the file, the record
and the fix, exit 2, and no storage is created; a FIFO image hangs neither command; a run in
which every trial failed exits non-zero."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import effscale.search.objective
from effscale.detector.data import make_synthetic_coco
from effscale.search.cli import main
from tests.detector_tests.data_tests.bad_data import CASES, fifo_image
from tests.search_tests.conftest import as_training, edit_study

TINY = {
    "base.phi_proxy": "-4",
    "base.resolution": "64",
    "base.num_classes": "6",
    "study.n_trials": "2",
    "space.alpha": "1.2",
    "space.beta": "1.1",
}
TRAIN = ["--phi", "-4", "--image-size", "64", "--steps", "1", "--batch-size", "4"]
TRAIN += ["--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated") / "data"
    make_synthetic_coco(root, n_train=16, n_val=8, image_size=64, seed=0)
    return root


def _study(surrogate_study, tmp_path: Path, generated: Path, case) -> tuple[Path, tuple[str, ...]]:
    """A tiny training study on ``tmp_path/data``, a copy of the generated set broken by
    ``case`` (which returns the parts the error must name)."""
    shutil.copytree(generated, tmp_path / "data")
    expected = case(tmp_path / "data")
    path = surrogate_study()
    text = as_training(
        path.read_text(), 'dir = "data"', 'steps = 1\nbatch_size = 4\ndevice = "cpu"'
    )
    path.write_text(edit_study(text, TINY))
    return path, expected


def _storage_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("study.toml", "data"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_search_refuses_bad_data_before_the_storage(
    surrogate_study, tmp_path, generated, case, capsys
):
    path, expected = _study(surrogate_study, tmp_path, generated, CASES[case])
    start = time.perf_counter()
    code = main(["search", str(path), "--quiet"])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("effscale search: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert _storage_files(tmp_path) == []  # no study.db, no journal, no lock
    with capsys.disabled():
        print(f"\nFIGURE bad data ({case}): exit {code}, refused in {seconds:.2f} s, storages 0")


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_refuses_bad_data_before_training(tmp_path, generated, case, capsys):
    shutil.copytree(generated, tmp_path / "data")
    expected = CASES[case](tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "data"), *TRAIN, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith("effscale train: error: ")
    assert all(part in line for part in expected), (expected, line)
    assert not out.exists()  # refused before training wrote anything


def _effscale(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "effscale.search.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_a_fifo_image_hangs_neither_train_nor_search(surrogate_study, tmp_path, generated):
    path, expected = _study(surrogate_study, tmp_path, generated, fifo_image)
    every_image = [*TRAIN, "--steps", "4"]  # 4 steps of 4: each of the 16 images is read
    for args in (["train", "--data", str(tmp_path / "data"), *every_image], ["search", str(path)]):
        try:
            done = _effscale(args, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"effscale {args[0]} hung on a FIFO image")
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and all(part in line for part in expected), line
    assert _storage_files(tmp_path) == []


def test_a_run_in_which_every_trial_failed_exits_non_zero(surrogate_study, monkeypatch, capsys):
    def failing(constants, **kw):  # fault injection: every evaluation gives NaN, so every FAIL
        return math.nan

    monkeypatch.setattr(effscale.search.objective, "surrogate_accuracy", failing)
    path = surrogate_study({"study.n_trials": "3", "space.alpha": "1.2", "space.beta": "1.1"})
    code = main(["search", str(path), "--quiet", "--storage", "journal:///study.journal"])
    captured = capsys.readouterr()
    assert "0 complete, 0 pruned, 3 failed" in captured.out
    assert code == 1
    assert (
        f"every trial failed (3); see their fail_reason and error with `effscale status {path}`"
        in (captured.err)
    )
    assert os.path.exists(path.parent / "study.journal")  # the failures are recorded
