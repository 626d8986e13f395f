"""The exponential moving average of a model's weights, cheap enough to run every step.

:class:`WeightEma` is timm's ``ModelEmaV3`` (same decay schedule, same arithmetic) with an update
that walks tensor lists made once: one multi-tensor lerp over the floating-point parameters and
buffers and one multi-tensor copy over the integer buffers (BatchNorm's step counters). timm's
update builds two ``state_dict()`` s and launches one copy per counter on every step: for D0 that
is 784 entries and 108 copies, milliseconds of host time per step, which a CUDA-graph step
cannot hide.

The update uses torch's multi-tensor ops directly, not timm's private helpers: those changed
between timm 1.0.29 (the GPU machine's) and 1.0.31, and the tests run against both.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["WeightEma"]


class WeightEma(ModelEmaV3):
    """``ModelEmaV3(model, decay=..., use_warmup=...)`` with a list-cached update.

    The lists hold the tensors of ``model`` as they are at the first update, so the model's
    parameters and buffers must be updated in place afterwards (optimizers and ``.to()`` of a
    module's memory format do that); ``update`` with another model object rebuilds them.

    The average lives on the model's device in the model's dtypes: ``device`` and ``dtype``
    (timm's options for an average kept elsewhere) are refused, use ``ModelEmaV3`` for those."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        for name in ("device", "dtype"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{name}: WeightEma keeps the average on the model's device in "
                    "its dtypes; leave it unset, or use timm's ModelEmaV3"
                )
        super().__init__(model, **kwargs)
        self._source: int | None = None
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    def _pair_up(self, model: nn.Module) -> None:
        ema_values = list(self.module.state_dict().values())
        model_values = list(model.state_dict().values())
        if len(ema_values) != len(model_values):
            raise ValueError(
                "model: it has another structure than the model this EMA was made from"
            )
        self._floats, self._others = ([], []), ([], [])
        for ema_v, model_v in zip(ema_values, model_values):
            target = self._floats if ema_v.is_floating_point() else self._others
            target[0].append(ema_v)
            target[1].append(model_v)
        self._source = id(model)

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        """Lerp the floating-point tensors towards ``model``'s by ``1 - decay`` and copy the
        others (the same result as ``ModelEmaV3.apply_update_``)."""
        if self._source != id(model):
            self._pair_up(model)
        if self._floats[0]:
            torch._foreach_lerp_(*self._floats, weight=1.0 - decay)
        if self._others[0]:
            torch._foreach_copy_(*self._others)
