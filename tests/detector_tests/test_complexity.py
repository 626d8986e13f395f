"""Complexity: exact params, MACs within 2.5% of the official profiler, a golden file, and the
analytic count against a traced count on the meta device.

Regenerate the golden file after an intended change with
``EFFSCALE_UPDATE_GOLDEN=1 python -m pytest tests/detector_tests/test_complexity.py``.
"""

import json
import os
from pathlib import Path

import pytest

from effscale.detector.complexity import count_complexity, trace_complexity
from effscale.detector.config import PRESET_NAMES, from_scaling, preset
from effscale.detector.scaling import PAPER_SPEC, BifpnRule, CompoundCoefficients, ScalingSpec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "complexity.json"

OFFICIAL_PARAMS = {
    "d0": 3_880_067,
    "d1": 6_625_898,
    "d2": 8_097_039,
    "d3": 12_032_296,
    "d4": 20_723_675,
    "d5": 33_653_315,
    "d6": 51_871_782,
    "d7": 51_871_782,
}
OFFICIAL_GMACS = {
    "d0": 2.551,
    "d1": 6.134,
    "d2": 11.046,
    "d3": 24.983,
    "d4": 55.347,
    "d5": 135.730,
    "d6": 226.034,
    "d7": 325.474,
}


def _current() -> dict:
    return {name: count_complexity(preset(name)).to_dict() for name in PRESET_NAMES}


def test_golden_file_has_no_drift():
    current = _current()
    if os.environ.get("EFFSCALE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden == current


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_params_equal_official_and_macs_within_2_5_percent(name):
    cost = count_complexity(preset(name))
    assert cost.params == OFFICIAL_PARAMS[name]
    assert abs(cost.gmacs / OFFICIAL_GMACS[name] - 1) < 0.025
    # convs only: never above the official profiler, which also counts elementwise ops
    assert cost.gmacs < OFFICIAL_GMACS[name]


def test_d0_parts_match_the_official_module_counts():
    parts = count_complexity(preset("d0")).parts
    assert parts["backbone"]["params"] == 3_595_388
    assert parts["fpn"]["params"] == 196_281
    assert parts["class_head"]["params"] == 69_354
    assert parts["box_head"]["params"] == 19_044


@pytest.mark.parametrize("name", ["d0", "d3", "d7"])
def test_analytic_count_equals_traced_count_on_presets(name):
    assert count_complexity(preset(name)) == trace_complexity(preset(name))


@pytest.mark.parametrize(
    "phi, coefficients, size, levels, fusion",
    [
        (-2.0, (1.2, 1.1, 1.15), None, (3, 7), "fastattn"),
        (-1.3, (1.35, 1.05, 1.2), (96, 160), (3, 7), "attn"),
        (0.7, (1.1, 1.25, 1.1), (320, 224), (3, 6), "sum"),
        (-0.5, (1.2, 1.1, 1.15), (128, 128), (4, 5), "fastattn"),
    ],
)
def test_analytic_count_equals_traced_count_on_specs(phi, coefficients, size, levels, fusion):
    spec = ScalingSpec(
        coefficients=CompoundCoefficients(*coefficients),
        bifpn=BifpnRule(width_growth=1.3, depth_step=0.7),
    )
    config = from_scaling(
        spec,
        phi,
        num_classes=5,
        image_size=size,
        min_level=levels[0],
        max_level=levels[1],
        fusion=fusion,
    )
    assert count_complexity(config) == trace_complexity(config)


def test_macs_scale_with_resolution_and_phi():
    small = count_complexity(from_scaling(PAPER_SPEC, -2, num_classes=10))
    big = count_complexity(from_scaling(PAPER_SPEC, -1, num_classes=10))
    assert big.macs > small.macs and big.params > small.params
    d0 = preset("d0")
    quarter = count_complexity(d0.replace(image_size=(256, 256)))
    # convs scale with pixels; SE's 1x1 convs on pooled maps do not, so slightly above 1/4
    assert 0.25 < quarter.macs / count_complexity(d0).macs < 0.26
