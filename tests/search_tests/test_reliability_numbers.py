"""Issue #18, point 6: absurd numbers, devices, output paths, nested input, damaged checkpoints
and names that would leave their folder.

Before issue #18: ``train --seconds inf`` hung, ``--epochs inf`` raised ``OverflowError``,
``--device foo`` a ``RuntimeError`` traceback, ``--out`` naming a file failed after training;
``seed = 10**20`` gave an error naming no key (the database was created anyway),
``n_trials = 10**22`` was accepted and ``noise = 1e308`` recorded 1e307 as the best value;
deeply nested TOML or JSON gave a ``RecursionError``; a checkpoint with flipped tensor bytes or
NaN weights evaluated with exit 0 and one without ``step`` gave ``KeyError``; a study named
``../../../X`` exported outside ``exports/``.

    python -m pytest tests/search_tests/test_reliability_numbers.py -s   # prints the figures
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from effscale.detector.config import preset
from effscale.detector.model import build_model
from effscale.detector.train import CheckpointError, load_checkpoint, save_checkpoint
from effscale.search.cli import main
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file

from .conftest import STUDIES, as_training, edit_study

SURROGATE = (STUDIES / "surrogate_compound.toml").read_text()


def _one_line(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own one-line usage errors
        code = int(exit.code or 0)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return code, lines[0]


#: (study-file change, the key the one line names)
ABSURD_STUDY = [
    ({"study.seed": "100000000000000000000"}, "study.seed: must be in [0, 2147483647]"),
    ({"study.n_trials": "10000000000000000000000"}, "study.n_trials: must be in [1, 100000]"),
    ({"objective.surrogate.noise": "1e308"}, "objective.surrogate.noise: must be in [0, 1]"),
    ({"objective.surrogate.A": "5.0"}, "objective.surrogate.A: must be in (0, 1]"),
    ({"execution.workers": "1000000000"}, "execution.workers: must be in [1, 1024]"),
]


@pytest.mark.parametrize(
    "change, message", ABSURD_STUDY, ids=[m.split(":")[0] for _, m in ABSURD_STUDY]
)
def test_absurd_study_numbers_are_one_line_naming_the_key(tmp_path, capsys, change, message):
    text = SURROGATE if "execution" not in next(iter(change)) else SURROGATE + "\n[execution]\n"
    path = tmp_path / "study.toml"
    path.write_text(edit_study(text, change))
    code, line = _one_line(capsys, ["search", str(path), "--quiet"])
    assert code == 2 and f"study.toml: {message}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]  # no database


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train.epochs": "1000000000000"}, "train.epochs: must be in [1, 100000]"),
        ({"train.steps": "1000000000000"}, "train.steps: must be in [1, 1000000000]"),
    ],
)
def test_absurd_training_budgets_in_a_study_are_refused(tmp_path, capsys, change, message):
    path = tmp_path / "study.toml"
    path.write_text(edit_study(as_training(SURROGATE, train="batch_size = 4"), change))
    code, line = _one_line(capsys, ["search", str(path), "--quiet"])
    assert code == 2 and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def test_absurd_n_trials_and_workers_flags(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text(SURROGATE)
    code, line = _one_line(capsys, ["search", str(path), "--quiet", "--n-trials", str(10**22)])
    assert code == 2 and "--n-trials: 10,000,000,000,000,000,000,000 is more than 100,000" in line
    code, line = _one_line(capsys, ["search", str(path), "--quiet", "--workers", str(10**9)])
    assert code == 2 and "--workers: must be in [1, 1024]" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seconds", "inf"], "argument --seconds: invalid number of seconds 'inf'"),
        (["--seconds", "nan"], "argument --seconds: invalid number of seconds 'nan'"),
        (["--seconds", "1e300"], "argument --seconds: invalid number of seconds '1e300'"),
        (["--epochs", "inf"], "argument --epochs: invalid number of epochs 'inf'"),
        (["--epochs", "-1"], "argument --epochs: invalid number of epochs '-1'"),
        (["--steps", str(10**30)], "argument --steps: invalid number of steps"),
        (["--lr", "inf"], "argument --lr: invalid learning rate 'inf'"),
        (["--batch-size", str(10**12)], "argument --batch-size: invalid batch size"),
        (["--seed", str(10**20)], "argument --seed: invalid seed"),
        (["--workers", str(10**6)], "argument --workers: invalid number of loader workers"),
        (["--device", "foo"], "--device: 'foo' is not a device; use --device auto, cpu, cuda"),
        (["--device", "cuda:99"], "--device: "),
    ],
)
def test_absurd_train_flags_are_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    # the dataset does not exist: every one of these is refused before it is looked at
    argv = ["train", "--preset", "d0", "--data", str(tmp_path / "none")] + flags
    code, line = _one_line(capsys, argv)
    assert code == 2 and message in line, line


def test_train_out_naming_a_file_is_refused_before_the_data_is_read(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    for out in (taken, taken / "run1"):
        code, line = _one_line(
            capsys,
            ["train", "--preset", "d0", "--data", str(tmp_path / "none"), "--out", str(out)],
        )
        assert code == 2 and f"--out: {taken} is a file, not a folder" in line, line
    assert taken.read_text() == "mine"


def test_deeply_nested_toml_and_json_are_one_line(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    study = tmp_path / "study.toml"
    study.write_text(SURROGATE + f"\n[deep]\nvalue = {deep}\n")
    code, line = _one_line(capsys, ["search", str(study), "--quiet"])
    assert code == 2 and "study.toml: toml: nested too deeply" in line, line
    config = tmp_path / "deep.json"
    config.write_text(deep)
    code, line = _one_line(capsys, ["flops", "--config", str(config)])
    assert code == 2 and "nested too deeply" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.json", "study.toml"]


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of a small detector, as ``train_proxy`` writes it."""
    config = preset("d0", num_classes=3)
    model = build_model(config)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(
        path,
        {
            "format": "effscale-checkpoint-1",
            "config": config.to_dict(),
            "settings": {},
            "model": model.state_dict(),
            "ema": None,
            "optimizer": {},
            "step": 7,
            "epoch": 1,
            "train_seconds": 1.0,
            "history": [],
        },
    )
    return path


def _rewrite(source: Path, target: Path, change) -> Path:
    state = torch.load(source, weights_only=True)
    change(state)
    save_checkpoint(target, state)
    return target


def _flip_tensor_byte(source: Path, target: Path) -> Path:
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with open(source, "rb") as handle:  # the local header's own lengths give the data offset
        handle.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_damaged_or_incomplete_checkpoints_are_refused_in_one_line(checkpoint, tmp_path, capsys):
    assert load_checkpoint(checkpoint)["step"] == 7  # the positive control
    first = next(iter(torch.load(checkpoint, weights_only=True)["model"]))
    cases = {
        "flipped bytes": (
            _flip_tensor_byte(checkpoint, tmp_path / "flipped.pt"),
            "fails its CRC check",
        ),
        "NaN weights": (
            _rewrite(
                checkpoint,
                tmp_path / "nan.pt",
                lambda s: s["model"][first].view(-1).__setitem__(0, math.nan),
            ),
            f"holds non-finite weights (model {first} has NaN or inf)",
        ),
        "no step": (
            _rewrite(checkpoint, tmp_path / "nostep.pt", lambda s: s.pop("step")),
            "('step' is missing, expected int)",
        ),
        "step of the wrong type": (
            _rewrite(checkpoint, tmp_path / "strstep.pt", lambda s: s.update(step="7")),
            "('step' is str, expected int)",
        ),
        "not a zip": (tmp_path / "text.pt", "is truncated or corrupt"),
    }
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for case, (path, message) in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert message in str(caught.value), (case, caught.value)
        # evaluate checks the checkpoint before it reads any data
        code, line = _one_line(capsys, ["evaluate", str(path), "--data", str(tmp_path / "none")])
        assert code == 2 and message in line, (case, line)
    with capsys.disabled():
        print(
            f"\nFIGURE checkpoints: {len(cases)} damaged or incomplete checkpoints refused in one "
            "line each (CRC, non-finite weights, missing or mistyped keys, not a zip); "
            "evaluated with exit 0: 0"
        )


# ----------------------------------------------------------------------------- names in paths


def test_a_study_name_cannot_send_the_default_export_out_of_exports(tmp_path, capsys):
    folder = tmp_path / "a" / "b" / "c" / "project"
    folder.mkdir(parents=True)
    path = folder / "study.toml"
    path.write_text(
        edit_study(
            SURROGATE,
            {"study.name": '"../../../X"', "study.n_trials": "6", "constraint.kind": '"formula"'},
        )
    )
    run_study(load_study_file(path), quiet=True)
    capsys.readouterr()
    assert main(["export", str(path), "--phi", "0-1"]) == 0
    written = [p for p in (folder / "exports").iterdir()]
    assert len(written) == 1 and written[0].name.startswith("X-trial"), written
    assert json.loads((written[0] / "manifest.json").read_text())["study"]["name"] == "../../../X"
    assert sorted(p.name for p in tmp_path.rglob("*-trial*")) == [written[0].name]
