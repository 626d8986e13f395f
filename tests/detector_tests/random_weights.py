"""Random BatchNorm weights and statistics for the weight-mapping tests: a freshly built model's
BatchNorms are all alike (weight 1, bias 0, mean 0, variance 1), so a mapping that paired one
BatchNorm's tensors with another's would go unseen."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm of ``model`` its own weight, bias, running mean and variance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def relative_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """The largest, over output maps, of max |ours - theirs| / max |theirs|."""
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, theirs))
