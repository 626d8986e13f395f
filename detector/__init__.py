"""effscale's detector: a parameterized EfficientDet with config as data, exact D0-D7 presets,
one pure scaling function, analytic complexity and the proxy training loop.

Installed as ``effscale.detector``. The names below are imported on first use, so that
``effscale.detector.scaling`` and ``effscale.detector.config`` stay free of torch::

    from effscale.detector import build_model, count_complexity, from_scaling

    config = from_scaling(phi=1, alpha=1.2, beta=1.1)     # D1-like, paper rules otherwise
    print(count_complexity(config).macs)                  # multiply-adds per image
    model = build_model(config)                           # a torch.nn.Module
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "effscale.detector":
    raise ImportError(
        f"this folder is the package effscale.detector, imported here as {__name__!r}; "
        "install effscale (pip install -e .) and import effscale.detector"
    )

if TYPE_CHECKING:
    from .complexity import Complexity, count_complexity
    from .config import DetectorConfig, from_scaling, load_config, preset
    from .model import EfficientDet, build_model
    from .scaling import (
        PAPER_SPEC,
        BifpnRule,
        CompoundCoefficients,
        ResolutionRule,
        ScaledDimensions,
        ScalingSpec,
        scale,
    )
    from .train import DataSettings, DivergedError, TrainResult, TrainSettings, train_proxy

#: public name -> the submodule defining it
_EXPORTS = {
    "CompoundCoefficients": "scaling",
    "BifpnRule": "scaling",
    "ResolutionRule": "scaling",
    "ScalingSpec": "scaling",
    "ScaledDimensions": "scaling",
    "PAPER_SPEC": "scaling",
    "scale": "scaling",
    "DetectorConfig": "config",
    "preset": "config",
    "from_scaling": "config",
    "load_config": "config",
    "EfficientDet": "model",
    "build_model": "model",
    "Complexity": "complexity",
    "count_complexity": "complexity",
    "DataSettings": "train",
    "TrainSettings": "train",
    "TrainResult": "train",
    "DivergedError": "train",
    "train_proxy": "train",
}

__all__ = [
    "BifpnRule",
    "Complexity",
    "CompoundCoefficients",
    "DataSettings",
    "DetectorConfig",
    "DivergedError",
    "EfficientDet",
    "PAPER_SPEC",
    "ResolutionRule",
    "ScaledDimensions",
    "ScalingSpec",
    "TrainResult",
    "TrainSettings",
    "build_model",
    "count_complexity",
    "from_scaling",
    "load_config",
    "preset",
    "scale",
    "train_proxy",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'effscale.detector' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
