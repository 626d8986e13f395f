"""A parameterized EfficientDet: config as data, exact D0-D7 presets, analytic complexity.

Submodules are imported on first use, so ``import detector.scaling`` stays free of torch.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DetectorConfig",
    "preset",
    "from_scaling",
    "load_config",
    "build_model",
    "count_complexity",
]

_EXPORTS = {
    "DetectorConfig": "detector.config",
    "preset": "detector.config",
    "from_scaling": "detector.config",
    "load_config": "detector.config",
    "build_model": "detector.model",
    "count_complexity": "detector.complexity",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
