"""A dispatch recorder that finds, on the CPU, the operations that would stop a CUDA step from
running without the host: reading a value back (``.item()``, ``.tolist()``, ``bool(tensor)``),
shapes that depend on values (``nonzero``, boolean masks) and tensors made from host data
(``torch.tensor([...])``, a pageable copy on a GPU). On CUDA each of these synchronizes with the
host, and inside a CUDA-graph capture each one is an error. The CPU runs the same aten
operations as the GPU, so a test here predicts the capture there.

Blind spot: on a CPU tensor, ``.tolist()`` and ``.numpy()`` read memory without dispatching an
operation, so they pass unseen here (on CUDA they copy to the host and would be caught).
``float()``, ``int()``, ``bool()`` and ``.item()`` are seen."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadRecorder"]

#: aten operations that read back, have value-dependent shapes or lift host data
HOST_READ_OPS = (
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "lift_fresh",
    "item",
    "is_nonzero",
    "_unique",
    "unique_",
)


class HostReadRecorder(TorchDispatchMode):
    """``with HostReadRecorder() as recorder: ...`` then ``recorder.bad`` lists every offending
    aten operation by name (empty when the code ran without the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(op in name for op in HOST_READ_OPS):
            self.bad.append(name)
        if "aten.index" in name:  # boolean-mask indexing has data-dependent shapes
            for index in (args[1] if len(args) > 1 else ()) or ():
                if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                    self.bad.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))
