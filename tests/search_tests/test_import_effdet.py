"""``effscale import``: a locally saved (random) effdet checkpoint becomes an effscale config and
checkpoint that reproduce effdet's outputs, evaluate, and fine-tune with ``train --resume``."""

from __future__ import annotations

import json

import pytest
import torch

from effscale.detector.config import load_config
from effscale.detector.data import make_synthetic_coco
from effscale.detector.effdet_config import config_from_effdet
from effscale.detector.model import build_model
from effscale.detector.train import load_checkpoint
from effscale.search.cli import main
from tests.detector_tests.random_weights import randomize_batchnorms, relative_difference

effdet = pytest.importorskip("effdet")
from effdet.config import get_efficientdet_config  # noqa: E402 - after the importorskip
from omegaconf import OmegaConf  # noqa: E402 - effdet's dependency


@pytest.fixture(scope="module")
def effdet_checkpoint(tmp_path_factory):
    """effdet's tf_efficientdet_d0 fine-tuned to 6 classes at 64 px (random weights), saved as
    effdet's training script saves it, with its effdet config as JSON."""
    folder = tmp_path_factory.mktemp("effdet")
    h = get_efficientdet_config("tf_efficientdet_d0")
    h.num_classes = 6
    h.image_size = (64, 64)
    torch.manual_seed(0)
    model = randomize_batchnorms(effdet.EfficientDet(h, pretrained_backbone=False), seed=3).eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, folder / "effdet.pth")
    plain = OmegaConf.to_container(h)
    (folder / "d0_64.json").write_text(json.dumps(plain))
    return folder, model, plain


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_synthetic_coco(root, n_train=8, n_val=4, seed=0, image_size=(64, 64))
    return root


def test_import_reproduces_effdets_outputs(effdet_checkpoint, tmp_path, capsys):
    folder, theirs, plain = effdet_checkpoint
    out = tmp_path / "imported"
    argv = ["import", str(folder / "effdet.pth"), "--effdet-config", str(folder / "d0_64.json")]
    assert main([*argv, "--out", str(out), "--name", "d0-64"]) == 0
    printed = capsys.readouterr().out
    assert "imported d0-64: " in printed and "6 classes, padding same" in printed
    assert "outputs equal effdet's within" in printed
    config = load_config(out / "d0-64.toml")
    assert config == config_from_effdet(plain, name="d0-64")
    state = load_checkpoint(out)
    assert state["step"] == 0 and "optimizer" not in state  # weights only: fine-tuning starts anew
    ours = build_model(config).eval()
    ours.load_state_dict(state["model"])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = [*sum(theirs(images), [])]
        got = [*sum(ours(images), [])]
    assert relative_difference(got, expected) < 1e-4


def test_an_imported_checkpoint_evaluates_and_fine_tunes(effdet_checkpoint, shapes, tmp_path):
    folder, _, _ = effdet_checkpoint
    out = tmp_path / "imported"
    argv = ["import", str(folder / "effdet.pth"), "--effdet-config", str(folder / "d0_64.json")]
    assert main([*argv, "--out", str(out), "--no-compare"]) == 0
    name = "tf_efficientdet_d0"
    assert main(["evaluate", str(out), "--data", str(shapes), "--device", "cpu"]) == 0
    tune = ["train", "--config", str(out / f"{name}.toml"), "--data", str(shapes), "--out"]
    tune += [str(out), "--resume", "--steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main([*tune, "--quiet"]) == 0
    tuned = load_checkpoint(out)
    assert tuned["step"] == 1 and tuned["optimizer"] is not None


def test_the_named_model_gets_the_checkpoints_classes(effdet_checkpoint, tmp_path, capsys):
    folder, _, _ = effdet_checkpoint
    out = tmp_path / "named"
    argv = ["import", str(folder / "effdet.pth"), "--model", "tf_efficientdet_d0"]
    assert main([*argv, "--out", str(out)]) == 0  # compared at 128 px: effdet's d0, 6 classes
    assert "outputs equal effdet's within" in capsys.readouterr().out
    config = load_config(out / "tf_efficientdet_d0.toml")
    assert (config.num_classes, config.image_size) == (6, (512, 512))


def test_a_checkpoint_of_another_model_writes_nothing(effdet_checkpoint, tmp_path, capsys):
    folder, _, _ = effdet_checkpoint
    out = tmp_path / "wrong"
    argv = ["import", str(folder / "effdet.pth"), "--model", "tf_efficientdet_d1"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "effscale import: error: checkpoint: the effdet state dict does not fit the config"
    )
    assert not out.exists()
    assert main([*argv[:2], "--model", "efficientdet_d0", "--out", str(out)]) == 2
    assert "redundant_bias = False" in capsys.readouterr().err
