import math

import pytest

from effscale.detector.scaling import (
    PAPER_SPEC,
    BifpnRule,
    CompoundCoefficients,
    ResolutionRule,
    ScalingSpec,
    compound_cost_ratio,
    make_divisible,
    round_channels,
    round_repeats,
    round_resolution,
    scale,
)


def test_scaling_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, effscale.detector.scaling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "value, expected",
    [
        (16, 16),
        (17.6, 16),
        (35.2, 32),
        (86.4, 88),
        (116.64, 120),
        (3.0, 8),
        (157.46, 160),
        (12.0, 16),
        (11.9, 16),
        (7.0, 8),
    ],
)
def test_make_divisible_matches_timm_rule(value, expected):
    from timm.layers import make_divisible as timm_make_divisible

    assert make_divisible(value) == expected
    assert make_divisible(value) == timm_make_divisible(value, 8)


def test_round_channels_applies_multiplier_like_timm():
    from timm.models._efficientnet_builder import round_channels as timm_round

    for channels in (16, 24, 40, 80, 112, 192, 320, 1280):
        for mult in (0.5, 0.75, 1.0, 1.1, 1.2, 1.4, 1.8, 2.0, 0.9091):
            assert round_channels(channels, mult) == timm_round(channels, mult)


def test_round_repeats_is_ceil_and_at_least_one():
    assert round_repeats(3, 1.2) == 4  # 3.6 -> 4
    assert round_repeats(2, 1.0) == 2
    assert round_repeats(2, 1.1) == 3
    assert round_repeats(1, 0.2) == 1
    assert round_repeats(4, 0.5) == 2


def test_round_resolution_to_multiple_of_8():
    assert round_resolution(512) == 512
    assert round_resolution(588.8) == 592
    assert round_resolution(603) == 600 and round_resolution(605) == 608
    assert round_resolution(3) == 32


def test_paper_rules_give_official_bifpn_dims_where_the_release_follows_them():
    # W = 64 * 1.35^phi, D = 3 + phi, D_head = 3 + floor(phi / 3), R = 512 + 128 phi
    expected = {0: (64, 3, 3, 512), 1: (88, 4, 3, 640), 3: (160, 6, 4, 896), 4: (216, 7, 4, 1024)}
    for phi, (w, d, h, r) in expected.items():
        dims = scale(PAPER_SPEC, phi)
        assert (dims.bifpn_channels, dims.bifpn_repeats, dims.head_repeats, dims.resolution) == (
            w,
            d,
            h,
            r,
        )
    dims = scale(PAPER_SPEC, 2)
    assert dims.width_multiplier == round(1.1**2, 4)
    assert dims.depth_multiplier == round(1.2**2, 4)


def test_negative_and_fractional_phi_give_small_legal_models():
    dims = scale(PAPER_SPEC, -2)
    assert dims.resolution == 256
    assert dims.bifpn_channels == make_divisible(64 * 1.35**-2)  # 35.1 -> 32
    assert dims.bifpn_channels == 32
    assert dims.bifpn_repeats == 1
    assert dims.head_repeats == 2  # 3 + floor(-2/3)
    assert dims.width_multiplier == pytest.approx(1.1**-2, abs=1e-4)
    half = scale(PAPER_SPEC, 0.5)
    assert half.resolution == 576 and half.bifpn_repeats == 4


def test_compound_resolution_rule_uses_gamma():
    spec = ScalingSpec(
        coefficients=CompoundCoefficients(1.2, 1.1, 1.15),
        resolution=ResolutionRule(kind="compound", base=224),
    )
    assert scale(spec, 1).resolution == round_resolution(224 * 1.15)
    assert scale(spec, 3).resolution == round_resolution(224 * 1.15**3)


def test_cost_ratio_formula():
    assert compound_cost_ratio(1.2, 1.1, 1.15) == pytest.approx(1.2 * 1.21 * 1.3225)
    assert CompoundCoefficients().cost_ratio() == pytest.approx(1.92027, rel=1e-5)


@pytest.mark.parametrize(
    "factory, field",
    [
        (lambda: CompoundCoefficients(alpha=0.9), "alpha"),
        (lambda: CompoundCoefficients(beta=float("nan")), "beta"),
        (lambda: BifpnRule(width_base=-64), "width_base"),
        (lambda: BifpnRule(depth_base=0), "depth_base"),
        (lambda: BifpnRule(head_depth_base=0), "head_depth_base"),
        (lambda: ResolutionRule(kind="cubic"), "kind"),
        (lambda: ScalingSpec(backbone_width=-1.0), "backbone_width"),
        (lambda: scale(PAPER_SPEC, math.inf), "phi"),
    ],
)
def test_bad_values_name_the_field(factory, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        factory()
