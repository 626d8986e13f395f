"""``[base] pretrained`` in a study file: accepted when every φ=1 backbone of the space fits the
weights, refused in one line before any trial otherwise; rendered back, fingerprinted only when
given, and handed to the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from effscale.search.data import prepare_data
from effscale.search.objective import train_inputs
from effscale.search.study_file import StudyFileError, load_study_file, parse_study_text
from tests.search_tests.conftest import STUDIES, as_training, edit_study

#: a training study whose φ=1 backbone is B0 at every point: base D0 at phi_proxy 0, with
#: beta = 1 (width) and alpha = 1 (depth) fixed; gamma alone scales (solve mode)
FIXED_BACKBONE = {
    "base.phi_proxy": "0",
    "space.alpha": "1.0",
    "space.beta": "1.0",
    "constraint.target": "1.3",
    "base.num_classes": "6",  # the generated data's
}


@pytest.fixture(scope="module")
def b0_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "b0.pth"
    torch.save(timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict(), path)
    return path


def _study(tmp_path: Path, changes: dict[str, str]) -> Path:
    text = as_training((STUDIES / "surrogate_compound.toml").read_text())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.toml"
    path.write_text(edit_study(text, changes))
    return path


def test_weights_that_fit_every_trained_backbone_are_accepted(tmp_path, b0_file):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "b0.pth").write_bytes(b0_file.read_bytes())
    path = _study(tmp_path, {**FIXED_BACKBONE, "base.pretrained": '"weights/b0.pth"'})
    d = load_study_file(path)
    assert d.base.pretrained == tmp_path / "weights" / "b0.pth"  # relative to the study file
    again = parse_study_text(d.text, path=path)  # rendered back: equal, same fingerprint
    assert again == d and again.fingerprint() == d.fingerprint()
    assert 'pretrained = "weights/b0.pth"' in d.text
    without = load_study_file(_study(tmp_path / "plain", FIXED_BACKBONE))
    assert without.base.pretrained is None and "pretrained" not in without.text
    assert without.fingerprint() != d.fingerprint()
    data, _ = prepare_data(d)
    assert data is not None
    _, settings = train_inputs(d, data)
    assert settings.pretrained == str(tmp_path / "weights" / "b0.pth")


def test_a_space_whose_backbones_outgrow_the_weights_is_refused_before_any_trial(tmp_path, b0_file):
    path = _study(tmp_path, {"base.phi_proxy": "0", "base.pretrained": f'"{b0_file}"'})
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)  # alpha 1.0-1.6, beta 1.0-1.4: the largest point is no B0
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("study.toml: base.pretrained: at the largest point of the space")
    assert "these are the weights of tf_efficientnet_b0" in message
    assert "fix alpha and beta" in message
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "value, problem",
    [
        ('"missing/b0.pth"', "missing/b0.pth is not a file"),
        ("3", "must be a string, got 3"),
        ('"no_such_net"', "'no_such_net' is neither a weights file"),
    ],
)
def test_bad_pretrained_values_are_one_line(tmp_path, value, problem):
    path = _study(tmp_path, {**FIXED_BACKBONE, "base.pretrained": value})
    with pytest.raises(StudyFileError, match="base.pretrained: ") as info:
        load_study_file(path)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_a_surrogate_study_has_nothing_to_load_weights_into(tmp_path, b0_file):
    text = edit_study(
        (STUDIES / "surrogate_compound.toml").read_text(),
        {**FIXED_BACKBONE, "base.pretrained": f'"{b0_file}"'},
    )
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(StudyFileError, match='nothing is trained with objective.kind = "surr'):
        load_study_file(tmp_path / "s.toml")
