"""The checks of a split before a run (effscale.detector.data.validate): every case of issue 18's
"bad data gets in" is one line naming the file, the record and the fix, both up front
(validate_data) and when a split is opened (CocoDetection); a FIFO is never opened."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from effscale.detector.data import (
    DECODE_SAMPLE,
    CocoDetection,
    CocoSplit,
    DataError,
    load_split,
    make_synthetic_coco,
    validate_data,
    validate_split,
)
from effscale.detector.data.validate import check_image_file
from tests.detector_tests.data_tests.bad_data import CASES, bomb_png, fifo_image


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated") / "data"
    make_synthetic_coco(root, n_train=8, n_val=4, image_size=64, seed=0)
    return root


@pytest.fixture
def dataset(generated, tmp_path) -> Path:
    """A fresh copy of the generated set, to corrupt."""
    return Path(shutil.copytree(generated, tmp_path / "data"))


def _splits(root: Path) -> tuple[CocoSplit, CocoSplit]:
    return tuple(  # type: ignore[return-value]
        CocoSplit(annotations=root / s / "instances.json", images=root / s / "images")
        for s in ("train", "val")
    )


def _within(seconds: float, fifo: Path, call):
    """Run ``call()`` in a thread; if it is still blocked after ``seconds`` (opening the FIFO),
    unblock it by opening the FIFO's other end, then fail."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
        pytest.fail(f"blocked for {seconds} s opening the FIFO {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_a_good_generated_set_passes_and_is_fully_decoded(generated, capsys):
    start = time.perf_counter()
    train, val = validate_data(*_splits(generated))
    seconds = time.perf_counter() - start
    assert (train.images, train.decoded, val.images, val.decoded) == (8, 8, 4, 4)
    assert train.boxes > 0 and val.boxes > 0 and train.num_classes == 6
    assert train.category_ids == val.category_ids == (1, 2, 3, 5, 7, 9)
    with capsys.disabled():
        print(f"\nFIGURE validate: 8 + 4 generated images checked and decoded in {seconds:.3f} s")


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_case_is_one_line_naming_file_record_and_fix(dataset, case):
    expected = CASES[case](dataset)
    with pytest.raises(DataError) as exc:
        validate_data(*_splits(dataset))
    message = str(exc.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize(
    "case", ["bbox with null", "list as category_id", "list as image_id", "number as file_name"]
)
def test_malformed_records_are_refused_when_a_split_is_opened(dataset, case):
    """The record checks are shared: opening a split raises the same DataError, not a
    TypeError from deep inside (as before: float(None), an unhashable list, a number path)."""
    expected = CASES[case](dataset)
    split = "val" if "val/" in expected[0] else "train"
    with pytest.raises(DataError) as exc:
        load_split(dataset, split)
    assert all(part in str(exc.value) for part in expected)


def test_a_bomb_is_refused_when_the_image_is_loaded(dataset):
    ds = load_split(dataset, "train")
    bomb_png(ds.image_path(0), 40_000, 40_000)
    with pytest.raises(DataError, match="1600000000 pixels, over the limit of 89478485"):
        ds[0]


def test_a_fifo_is_refused_without_being_opened(dataset):
    expected = fifo_image(dataset)
    fifo = next((dataset / "train" / "images").glob(expected[0]))
    with pytest.raises(DataError) as exc:
        _within(20, fifo, lambda: validate_data(*_splits(dataset)))
    assert all(part in str(exc.value) for part in expected)
    with pytest.raises(DataError, match="is a FIFO, not a regular file"):  # opening the split
        _within(20, fifo, lambda: load_split(dataset, "train"))


def test_a_fifo_that_appears_later_is_refused_at_load_time(dataset):
    ds = load_split(dataset, "train")
    fifo_image(dataset)
    fifo = ds.image_path(0)
    with pytest.raises(DataError, match="is a FIFO"):
        _within(20, fifo, lambda: ds[0])


def test_not_regular_files_and_empty_files_are_named(tmp_path):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a folder, not a regular file"):
        check_image_file(tmp_path / "folder.png")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\)"):
        check_image_file(tmp_path / "empty.png")
    with pytest.raises(DataError, match="is missing on disk"):
        check_image_file(tmp_path / "nowhere.png")


def test_a_truncated_image_cannot_be_decoded(dataset):
    image = next(iter(sorted((dataset / "train" / "images").iterdir())))
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DataError, match=f"{image.name} cannot be decoded"):
        validate_split(_splits(dataset)[0], "train")


def test_a_train_split_without_a_usable_box_is_refused(dataset):
    ann_file = dataset / "train" / "instances.json"
    data = json.loads(ann_file.read_text())
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match="has no box to learn from"):
        validate_split(_splits(dataset)[0], "train")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "appears twice"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "negative width or height"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "is not four finite numbers"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd 2; use 0 or 1"),
        (lambda d: d["annotations"][0].update(area="big"), 'area "big" is not a finite'),
        (lambda d: d["images"][0].update(width=0), "width 0 is not a positive integer"),
        (lambda d: d["images"][0].update(id="a"), 'images[0] (id "a"): id "a" is not an'),
        (lambda d: d["images"][0].update(file_name="/etc/passwd"), "is an absolute path"),
        (lambda d: d["categories"][0].update(id=None), "categories[0]: needs an integer 'id'"),
    ],
)
def test_more_malformed_records(dataset, change, expected):
    ann_file = dataset / "train" / "instances.json"
    data = json.loads(ann_file.read_text())
    change(data)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        validate_split(_splits(dataset)[0], "train")
    assert expected in str(exc.value) and str(ann_file) in str(exc.value)


def test_both_splits_must_list_the_same_categories(dataset):
    ann_file = dataset / "val" / "instances.json"
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": 42, "name": "extra"})
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"only in train: none, only in val: \[42\]"):
        validate_data(*_splits(dataset))


def test_decoding_is_sampled_and_the_rest_is_checked_at_load_time(dataset):
    """As documented: every record and every file's type are checked, but only
    ``decode_sample`` images are decoded; one outside the sample fails when it is loaded."""
    train, _ = _splits(dataset)
    data = json.loads(train.annotations.read_text())
    last = max(data["images"], key=lambda img: img["id"])
    (train.images / last["file_name"]).write_bytes(b"garbage" * 20)
    check = validate_split(train, "train", decode_sample=1)  # decodes the first image only
    assert check.decoded == 1 and check.images == 8
    with pytest.raises(DataError, match="cannot be decoded"):
        validate_split(train, "train", decode_sample=DECODE_SAMPLE)
    ds = CocoDetection(train.images, train.annotations)
    with pytest.raises(DataError, match=f"{last['file_name']} cannot be decoded"):
        ds[len(ds) - 1]
