"""``effscale make-data`` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from effscale.search.cli import main
from effscale.search.commands.make_data import parse_image_size


def test_make_data_writes_dataset_then_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-data", str(out), "--train", "4", "--val", "2", "--image-size", "64"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "4 train + 2 val" in printed[0] and str(out) in printed[0]
    assert len(list((out / "train" / "images").glob("*.png"))) == 4
    assert len(json.loads((out / "val" / "instances.json").read_text())["images"]) == 2

    assert main(["make-data", str(out), "--train", "4", "--val", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make-data: error:" in err[0] and "--overwrite" in err[0]

    assert (
        main(
            [
                "make-data",
                str(out),
                "--train",
                "3",
                "--val",
                "1",
                "--image-size",
                "64x96",
                "--overwrite",
            ]
        )
        == 0
    )
    images = json.loads((out / "train" / "instances.json").read_text())["images"]
    assert len(images) == 3 and (images[0]["height"], images[0]["width"]) == (64, 96)


def test_default_size_and_seed(tmp_path):
    out = tmp_path / "d"
    assert main(["make-data", str(out), "--train", "1", "--val", "1", "--seed", "4"]) == 0
    data = json.loads((out / "train" / "instances.json").read_text())
    assert (data["images"][0]["height"], data["images"][0]["width"]) == (256, 256)
    assert data["info"]["seed"] == 4


def test_parse_image_size():
    assert parse_image_size("256") == (256, 256)
    assert parse_image_size("256x192") == (256, 192)
    for bad in ("0", "abc", "256x", "16x16", "1x2x3"):
        with pytest.raises(Exception, match="invalid image size"):
            parse_image_size(bad)


@pytest.mark.parametrize("argv", [["--train", "0"], ["--image-size", "12"], ["--seed", "-3"]])
def test_bad_options_exit_2(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["make-data", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()
