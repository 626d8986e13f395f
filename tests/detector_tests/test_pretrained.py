"""ImageNet weights for the backbone: a locally saved timm EfficientNet-B0 state dict (no network
here), timm's cache, ``effscale train --pretrained``, and one-line refusals where no weights
fit."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from effscale.detector.config import preset
from effscale.detector.data import make_synthetic_coco
from effscale.detector.model import build_model
from effscale.detector.pretrained import (
    PretrainedError,
    check_pretrained_fits,
    load_pretrained_backbone,
    resolve_pretrained,
)
from effscale.detector.train import load_checkpoint
from effscale.search.cli import main


@pytest.fixture(scope="module")
def b0_weights(tmp_path_factory):
    """timm's tf_efficientnet_b0 (random weights: pretrained=False) saved as a classifier
    state dict, as a user would save a downloaded one."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "tf_efficientnet_b0.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_a_local_b0_state_dict_loads_into_d0s_backbone(b0_weights):
    path, theirs = b0_weights
    model = build_model(preset("d0"))
    assert not torch.equal(model.backbone.body.conv_stem.weight, theirs["conv_stem.weight"])
    assert load_pretrained_backbone(model.backbone, path) == path
    assert torch.equal(model.backbone.body.conv_stem.weight, theirs["conv_stem.weight"])
    ours = model.backbone.body.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())  # every backbone tensor
    assert not any(k.startswith(("conv_head", "bn2", "classifier")) for k in ours)


def test_safetensors_and_timms_cache_hold_the_same_weights(b0_weights, tmp_path):
    path, theirs = b0_weights
    file = tmp_path / "b0.safetensors"
    safetensors.torch.save_file(theirs, file)
    model = build_model(preset("d0"))
    load_pretrained_backbone(model.backbone, file)
    assert torch.equal(model.backbone.body.conv_stem.weight, theirs["conv_stem.weight"])
    # timm's Hugging Face cache, laid out as huggingface_hub writes it, read without a network
    repo = timm.models.get_pretrained_cfg("tf_efficientnet_b0").hf_hub_id
    cached = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("0123abcd")
    (cached / "snapshots" / "0123abcd").mkdir(parents=True)
    (cached / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(file.read_bytes())
    found = resolve_pretrained("tf_efficientnet_b0", cache_dir=tmp_path / "hub")
    assert found == cached / "snapshots" / "0123abcd" / "model.safetensors"
    model = build_model(preset("d0"))
    load_pretrained_backbone(model.backbone, "tf_efficientnet_b0", cache_dir=tmp_path / "hub")
    assert torch.equal(model.backbone.body.conv_stem.weight, theirs["conv_stem.weight"])


def test_weights_that_fit_no_backbone_are_refused_in_one_line(b0_weights, tmp_path):
    path, _ = b0_weights
    with pytest.raises(PretrainedError) as info:
        check_pretrained_fits(preset("d1").backbone, path)  # B1's depth: more blocks
    message = str(info.value)
    assert message.startswith("pretrained: the weights in ") and "\n" not in message
    assert "do not fit the backbone (width 1 x depth 1.1)" in message
    assert "these are the weights of tf_efficientnet_b0 (width 1 x depth 1)" in message
    with pytest.raises(PretrainedError, match="no released weights|not in the local Hugging"):
        check_pretrained_fits(preset("d0").backbone, "tf_efficientnet_b0", cache_dir=tmp_path)
    with pytest.raises(PretrainedError, match="'no_such_net' is neither a weights file"):
        resolve_pretrained("no_such_net")
    with pytest.raises(PretrainedError, match="not found"):
        resolve_pretrained(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(PretrainedError, match="junk.pth cannot be read"):
        check_pretrained_fits(preset("d0").backbone, tmp_path / "junk.pth")


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_synthetic_coco(root, n_train=8, n_val=4, seed=0, image_size=(64, 64))
    return root


def _train(data, out, *extra):
    return main(
        [
            "train",
            "--preset",
            "d0",
            "--image-size",
            "64",
            "--data",
            str(data),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--lr",
            "1e-12",  # one step that leaves the weights as they came
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_train_pretrained_starts_from_the_files_weights(b0_weights, shapes64, tmp_path):
    path, theirs = b0_weights
    assert _train(shapes64, tmp_path / "pre", "--pretrained", str(path)) == 0
    stem = load_checkpoint(tmp_path / "pre")["model"]["backbone.body.conv_stem.weight"]
    assert torch.allclose(stem, theirs["conv_stem.weight"], rtol=0, atol=1e-9)
    assert load_checkpoint(tmp_path / "pre")["settings"]["pretrained"] == str(path)
    assert _train(shapes64, tmp_path / "random") == 0
    stem = load_checkpoint(tmp_path / "random")["model"]["backbone.body.conv_stem.weight"]
    assert not torch.allclose(stem, theirs["conv_stem.weight"], atol=1e-3)


def test_train_refuses_weights_that_do_not_fit_before_training(
    b0_weights, shapes64, tmp_path, capsys
):
    path, _ = b0_weights
    argv = ["--pretrained", str(path), "--preset", "d1"]
    assert _train(shapes64, tmp_path / "d1", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("effscale train: error: --pretrained: the weights")
    assert not (tmp_path / "d1").exists()
