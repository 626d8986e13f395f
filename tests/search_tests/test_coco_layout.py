"""Issue 16 (1), COCO from where it lies: a split given as its annotation file and image folder,
``[data] train = {annotations, images}`` and ``val = {...}`` in a study file, or the
``--train-annotations/--train-images`` and ``--val-annotations/--val-images`` flags of
``effscale train`` and ``effscale evaluate``; the ``DIR/{train,val}`` folder stays the short form.
The acceptance: a COCO-layout copy of a generated set trains and searches."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from effscale.detector.data import CocoSplit, make_synthetic_coco
from effscale.search.cli import main
from effscale.search.data import prepare_data, study_num_classes
from effscale.search.definition import render_study_text
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import StudyFileError, load_study_file, parse_study_text
from tests.search_tests.conftest import as_training, edit_study

TINY = {
    "base.phi_proxy": "-4",
    "base.resolution": "64",
    "study.n_trials": "2",
    "space.beta": "{low = 1.0, high = 1.2}",
}
TRAIN_SPLIT = (
    'train = {annotations = "coco/annotations/instances_train2017.json", images = "coco/train2017"}'
)
VAL_SPLIT = (
    'val = {annotations = "coco/annotations/instances_val2017.json", images = "coco/val2017"}'
)
SPLITS = f"{TRAIN_SPLIT}\n{VAL_SPLIT}"


@pytest.fixture(scope="module")
def coco_copy(tmp_path_factory) -> Path:
    """A generated set laid out as COCO is downloaded: annotations/instances_{train,val}2017.json
    with the images in train2017/ and val2017/."""
    base = tmp_path_factory.mktemp("layout")
    make_synthetic_coco(base / "generated", n_train=16, n_val=8, image_size=64, seed=0)
    root = base / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(
            base / "generated" / split / "instances.json",
            root / "annotations" / f"instances_{split}2017.json",
        )
        shutil.copytree(base / "generated" / split / "images", root / f"{split}2017")
    return root


@pytest.fixture
def coco(coco_copy, tmp_path) -> Path:
    """The COCO-layout copy at ``tmp_path/coco``, next to the study files of the test."""
    return Path(shutil.copytree(coco_copy, tmp_path / "coco"))


def _study(surrogate_study, data: str = SPLITS, changes: dict[str, str] | None = None) -> Path:
    path = surrogate_study()
    text = as_training(path.read_text(), data, 'steps = 2\nbatch_size = 4\ndevice = "cpu"')
    text = re.sub(r"(?m)^num_classes = 90\n", "", text)  # the classes come from the data
    path.write_text(edit_study(text, {**TINY, **(changes or {})}))
    return path


def test_the_study_file_reads_splits_where_they_lie(surrogate_study, coco):
    d = load_study_file(_study(surrogate_study))
    assert d.data.dir is None and d.data.generate is None
    assert d.data.train == CocoSplit(
        annotations=coco / "annotations" / "instances_train2017.json", images=coco / "train2017"
    )
    assert d.data.val.images == coco / "val2017"
    assert study_num_classes(d) == 6  # from the listed categories, no image read
    again = parse_study_text(render_study_text(d), path=d.path)
    assert again == d and again.fingerprint() == d.fingerprint()
    assert 'annotations = "coco/annotations/instances_val2017.json"' in render_study_text(d)


def test_the_fingerprint_follows_the_paths_relative_to_the_study(surrogate_study, coco, tmp_path):
    d = load_study_file(_study(surrogate_study))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(coco, moved / "coco")
    shutil.copy(d.path, moved / d.path.name)
    assert load_study_file(moved / d.path.name).fingerprint() == d.fingerprint()
    other = load_study_file(_study(surrogate_study, data=SPLITS.replace("val2017", "train2017")))
    assert other.fingerprint() != d.fingerprint()


@pytest.mark.parametrize(
    "data, expected",
    [
        (TRAIN_SPLIT, "data.val: missing (train and val are given together)"),
        (f'dir = "coco"\n{SPLITS}', "data: needs exactly one of dir, generate and train + val"),
        (
            SPLITS.replace("instances_train2017.json", "nowhere.json"),
            "data.train.annotations: ",
        ),
        (
            SPLITS.replace(
                'images = "coco/val2017"', 'images = "coco/annotations/instances_val2017.json"'
            ),
            "is not a folder; point it at the folder of its images",
        ),
        (
            SPLITS.replace('images = "coco/train2017"', "images = 3"),
            "data.train.images: must be a path string, got 3",
        ),
        (
            SPLITS.replace('images = "coco/train2017"', 'images = "coco/train2017", labels = 1'),
            "data.train.labels: unknown key; allowed keys are annotations, images",
        ),
        ('train = "coco"\n' + VAL_SPLIT, "data.train: must be a table"),
    ],
)
def test_split_keys_are_checked_in_one_line(surrogate_study, coco, data, expected):
    with pytest.raises(StudyFileError) as exc:
        load_study_file(_study(surrogate_study, data=data))
    message = str(exc.value)
    assert "\n" not in message and message.startswith("study.toml: ")
    assert expected in message, message


def test_prepare_data_checks_the_splits_where_they_lie(surrogate_study, coco):
    d = load_study_file(_study(surrogate_study))
    data, classes = prepare_data(d)
    assert classes == 6 and data == d.data  # nothing generated, nothing moved
    ann_file = coco / "annotations" / "instances_val2017.json"
    broken = json.loads(ann_file.read_text())
    broken["annotations"][0]["bbox"] = [None, 1, 2, 3]
    ann_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"instances_val2017.json: annotations\[0\] \(id 1\)"):
        prepare_data(d)


@pytest.mark.slow
def test_a_coco_layout_copy_searches(surrogate_study, coco):
    d = load_study_file(_study(surrogate_study))
    summary = run_study(d, storage="journal:///study.journal", quiet=True)
    assert (summary.started, summary.n_complete, summary.n_failed) == (2, 2, 0)
    assert not (d.folder / ".effscale-cache").exists()  # the data is used where it lies


@pytest.mark.slow
def test_a_coco_layout_copy_trains_and_evaluates_from_the_flags(coco, tmp_path, capsys):
    splits = [
        *("--train-annotations", str(coco / "annotations" / "instances_train2017.json")),
        *("--train-images", str(coco / "train2017")),
        *("--val-annotations", str(coco / "annotations" / "instances_val2017.json")),
        *("--val-images", str(coco / "val2017")),
    ]
    out = tmp_path / "run"
    code = main(
        [
            "train",
            *("--phi", "-4", "--image-size", "64", "--steps", "2", "--batch-size", "4"),
            *("--device", "cpu", "--format", "json", "--out", str(out)),
            *splits,
        ]
    )
    assert code == 0, capsys.readouterr().err
    trained = json.loads(capsys.readouterr().out)
    assert trained["steps"] == 2 and 0.0 <= trained["ap"] <= 1.0
    code = main(["evaluate", str(out), "--device", "cpu", "--format", "json", *splits[4:]])
    assert code == 0, capsys.readouterr().err
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 2 and 0.0 <= evaluated["ap"] <= 1.0


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--train-annotations", "a.json"],
            "--train-images: missing (--train-annotations is given); give both "
            "--train-annotations and --train-images",
        ),
        (
            [],
            "--data: the train split has no location; give --data DIR, or "
            "--train-annotations FILE and --train-images DIR",
        ),
        (["--data", "nowhere"], "--data: dataset folder not found: nowhere"),
        (
            ["--train-annotations", "nowhere.json", "--train-images", "."],
            "--train-annotations: nowhere.json is not a file",
        ),
        (
            ["--data", "{coco}"],
            "has no train/ split folder but an annotations/ folder, as COCO is downloaded",
        ),
    ],
)
def test_split_flags_are_checked_in_one_line(coco, args, expected, capsys, monkeypatch):
    monkeypatch.chdir(coco.parent)
    args = [a.replace("{coco}", str(coco)) for a in args]
    assert main(["train", "--phi", "-4", "--steps", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("effscale train: error: ")
    assert expected in err, err
