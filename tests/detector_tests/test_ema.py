"""The weight EMA: timm's ModelEmaV3 numbers, with a list-cached update."""

import pytest
import torch
from timm.utils import ModelEmaV3

from effscale.detector.config import from_scaling
from effscale.detector.ema import WeightEma
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(from_scaling(PAPER_SPEC, -4, num_classes=3, image_size=(64, 64))).train()


def _train_a_little(model, step):
    """What an optimizer step and a forward pass do in place: new weights, new BN statistics."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(step)))


def test_matches_timm_model_ema_v3_bit_for_bit():
    model = _model()
    reference = ModelEmaV3(model, decay=0.99, use_warmup=True)
    ours = WeightEma(model, decay=0.99, use_warmup=True)
    for step in range(4):
        _train_a_little(model, step)
        reference.update(model, step=step)
        ours.update(model, step=step)
    expected, got = reference.module.state_dict(), ours.module.state_dict()
    assert list(expected) == list(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    counters = [k for k in got if k.endswith("num_batches_tracked")]
    assert counters and all(int(got[k]) == 4 for k in counters)
    moved = [
        k
        for k in got
        if got[k].is_floating_point() and not torch.equal(got[k], _model().state_dict()[k])
    ]
    assert moved  # the EMA follows the model


def test_another_model_object_rebuilds_the_lists_and_a_foreign_one_is_refused():
    model, twin = _model(0), _model(1)
    ema = WeightEma(model, decay=0.5)
    ema.update(model, step=5)  # past timm's first steps, where the decay is 0 (a plain copy)
    ema.update(twin, step=6)
    first = next(iter(ema.module.parameters()))
    expected = 0.5 * next(iter(model.parameters())) + 0.5 * next(iter(twin.parameters()))
    torch.testing.assert_close(first, expected)
    with pytest.raises(ValueError, match="another structure"):
        ema.update(torch.nn.Linear(2, 2), step=7)


@pytest.mark.parametrize("option", [{"dtype": torch.bfloat16}, {"device": torch.device("meta")}])
def test_an_average_kept_elsewhere_is_refused_with_the_alternative(option):
    with pytest.raises(ValueError, match="ModelEmaV3"):
        WeightEma(_model(), decay=0.9, **option)
