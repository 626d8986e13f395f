"""How many trials share one GPU when ``trials_per_gpu = "auto"`` (the default).

Proxy trainings are small: one rarely fills an H200, so several run side by side on one device
(``[execution] trials_per_gpu``, ``--trials-per-gpu``). ``auto`` picks that number ``M`` with one
rule (:func:`choose_trials_per_gpu`)::

    M = max(1, min(floor(0.9 × gpu_bytes / per_trial_bytes),      # device memory
                   max(1, (cpu_count - 1) // num_gpus),            # one core per trial, one left
                   8))                                             # cap: MAX_TRIALS_PER_GPU

``gpu_bytes`` is the total memory of the smallest listed GPU, ``cpu_count`` the cores this process
may run on, and ``per_trial_bytes`` the estimated peak device memory (bytes) of the largest trial
the study can sample (:func:`study_train_bytes`): every model built at the corner points of the
space (:func:`.family.corner_points`), at the study's ``[train] batch_size``, through
:func:`estimate_train_bytes`. With an SQLite storage the cap also keeps all workers within
:data:`.storage.SQLITE_MAX_WORKERS`.

Calibration of :data:`BYTES_PER_ACTIVATION`: effdet's ``tf_efficientdet_d0`` trained on an H200
under bf16 autocast with SGD peaked at 9.2 GiB at 512 px, batch 32, and at 2.4 GiB at 256 px,
batch 32, with 10 classes. :func:`effscale.detector.complexity.count_complexity` gives that D0 (10
classes) 43.5 M convolution output elements per image at 512 px and 10.9 M at 256 px:
9.2 GiB / (32 × 43.5 M) = 7.1 bytes and 2.4 GiB / (32 × 10.9 M) = 7.4 bytes per activation, the
whole peak (weights, optimizer state, CUDA context) included. 8 bytes is used for margin, and
the parameter and context terms come on top, so the estimate exceeds both measurements
(10.9 GiB, +19%; 3.2 GiB, +31%).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from effscale.detector.complexity import count_complexity
from effscale.detector.config import DetectorConfig
from effscale.detector.train import DEVICE_CACHE_FRACTION

from .definition import StudyDefinition
from .errors import ParameterError
from .family import build_configs, corner_points
from .storage import SQLITE_MAX_WORKERS, StorageLocation

__all__ = [
    "AUTO",
    "MAX_TRIALS_PER_GPU",
    "BYTES_PER_ACTIVATION",
    "BYTES_PER_PARAM",
    "CONTEXT_BYTES",
    "USABLE_FRACTION",
    "RULE",
    "PackingDecision",
    "estimate_train_bytes",
    "choose_trials_per_gpu",
    "study_train_bytes",
    "gpu_memory_bytes",
    "available_cpus",
    "resolve_packing",
    "given_record",
    "decide_packing",
    "check_trials_per_gpu",
]

#: the value of ``trials_per_gpu`` that asks for :func:`choose_trials_per_gpu`
AUTO = "auto"
#: at most this many trials per GPU, however small they are
MAX_TRIALS_PER_GPU = 8
#: bytes of device memory per convolution output element of one image (calibrated, see above)
BYTES_PER_ACTIVATION = 8
#: bytes per parameter: fp32 weight, gradient and two optimizer states
BYTES_PER_PARAM = 16
#: bytes per process for the CUDA context, cuDNN/cuBLAS workspaces and allocator slack (0.5 GiB)
CONTEXT_BYTES = 512 * 2**20
#: the fraction of a GPU's total memory that the packed trials may plan to use
USABLE_FRACTION = 0.9
#: the rule, as the docs state it
RULE = (
    "M = max(1, min(floor(usable_fraction × gpu_bytes / per_trial_bytes), "
    "max(1, (cpu_count - 1) // num_gpus), cap))"
)

_GIB = 2**30


@dataclass(frozen=True)
class PackingDecision:
    """What :func:`choose_trials_per_gpu` chose and why.

    ``trials_per_gpu`` is ``M``; ``by_memory``, ``by_cpu`` and ``cap`` are the three limits
    (``by_memory`` is ``cap`` when trials use no device memory, e.g. a surrogate objective);
    ``per_trial_bytes`` and ``gpu_bytes`` are the estimate of one trial and the GPU's total
    memory (bytes; ``gpu_bytes`` is 0 when it was not needed); ``cpu_count`` and ``num_gpus``
    the other inputs; ``reason`` is the one line shown to the user.
    """

    trials_per_gpu: int
    by_memory: int
    by_cpu: int
    cap: int
    per_trial_bytes: int
    gpu_bytes: int
    cpu_count: int
    num_gpus: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the study's ``packing`` user attr (``auto`` is ``True``)."""
        return {"auto": True, **asdict(self)}


def estimate_train_bytes(config: DetectorConfig, *, batch_size: int) -> int:
    """Estimated peak device memory of one process training ``config`` (bytes).

    ``batch_size × activations × BYTES_PER_ACTIVATION + BYTES_PER_PARAM × params +
    CONTEXT_BYTES``, with ``activations`` (convolution output elements per image) and ``params``
    from :func:`effscale.detector.complexity.count_complexity`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    cost = count_complexity(config)
    return (
        batch_size * cost.activations * BYTES_PER_ACTIVATION
        + BYTES_PER_PARAM * cost.params
        + CONTEXT_BYTES
    )


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def choose_trials_per_gpu(
    *,
    per_trial_bytes: int,
    gpu_bytes: int,
    cpu_count: int,
    num_gpus: int,
    usable_fraction: float = USABLE_FRACTION,
    cap: int = MAX_TRIALS_PER_GPU,
    cap_reason: str = "",
) -> PackingDecision:
    """``M``, the concurrent trials per GPU (a pure function; see :data:`RULE`)::

        M = max(1, min(floor(usable_fraction × gpu_bytes / per_trial_bytes),
                       max(1, (cpu_count - 1) // num_gpus), cap))

    ``per_trial_bytes``: estimated peak device memory of the largest trial (bytes; 0: trials use
    no device memory, memory is then no limit); ``gpu_bytes``: total memory of the smallest GPU
    (bytes); ``cpu_count``: cores available (one is kept for the driver, every trial gets one);
    ``num_gpus``: GPUs the trials are spread over; ``cap``: the most trials per GPU, explained
    in the reason by ``cap_reason`` when given.
    """
    if per_trial_bytes < 0 or gpu_bytes < 0:
        raise ValueError(
            f"per_trial_bytes and gpu_bytes: must be >= 0, got {per_trial_bytes} and {gpu_bytes}"
        )
    if cpu_count < 1 or num_gpus < 1 or cap < 1:
        raise ValueError(
            f"cpu_count, num_gpus and cap: must be >= 1, got {cpu_count}, {num_gpus} and {cap}"
        )
    if not 0 < usable_fraction <= 1:
        raise ValueError(f"usable_fraction: must be in (0, 1], got {usable_fraction}")
    if per_trial_bytes == 0:
        by_memory = cap
        memory = "trials use no GPU memory"
    else:
        by_memory = math.floor(usable_fraction * gpu_bytes / per_trial_bytes)
        memory = (
            f"memory allows {by_memory} ({per_trial_bytes / _GIB:.1f} GiB each of "
            f"{gpu_bytes / _GIB:.1f} GiB)"
        )
    by_cpu = max(1, (cpu_count - 1) // num_gpus)
    chosen = max(1, min(by_memory, by_cpu, cap))
    reason = (
        f"{_trials(chosen)} per GPU (auto): {memory}, CPU cores allow {by_cpu} "
        f"({cpu_count} cores, one kept for the driver, over {num_gpus} GPU"
        f"{'' if num_gpus == 1 else 's'}), cap {cap}"
    )
    if cap_reason:
        reason += f" ({cap_reason})"
    if by_memory < 1:
        reason += "; one trial may not fit: lower [train] batch_size if it runs out of memory"
    return PackingDecision(
        trials_per_gpu=chosen,
        by_memory=by_memory,
        by_cpu=by_cpu,
        cap=cap,
        per_trial_bytes=per_trial_bytes,
        gpu_bytes=gpu_bytes,
        cpu_count=cpu_count,
        num_gpus=num_gpus,
        reason=reason,
    )


def _hinted_classes(definition: StudyDefinition) -> int:
    """The class count without preparing the data: ``[base] num_classes``, the generated data's,
    else COCO's 90."""
    if definition.base.num_classes is not None:
        return definition.base.num_classes
    data = definition.data
    if data is not None and data.generate is not None:
        return data.generate.num_classes
    return 90


def study_train_bytes(definition: StudyDefinition, *, num_classes: int | None = None) -> int:
    """Estimated peak device memory of the largest trial of a study (bytes): the largest
    :func:`estimate_train_bytes` over the φ=0 and φ=1 models of both corner points of the space
    at ``[train] batch_size``. Trials train the φ=1 model; the high corner bounds every point the
    sampler can draw (feasible points are usually smaller). ``num_classes``: the data's (``None``:
    ``[base] num_classes``, the generated data's, else 90). 0 for a surrogate objective."""
    if definition.objective.kind != "train":
        return 0
    classes = num_classes if num_classes is not None else _hinted_classes(definition)
    return max(
        estimate_train_bytes(config, batch_size=definition.train.batch_size)
        for point in corner_points(definition.space, definition.constraint)
        for config in build_configs(definition.base, point, num_classes=classes)
    )


def gpu_memory_bytes(gpus: Sequence[int]) -> int:
    """Total memory of the smallest of ``gpus`` (device indices as this process sees them;
    bytes). Raises ``ValueError`` naming ``--gpus`` for an index that is not visible."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [g for g in gpus if g >= count]
    if missing or not gpus:
        raise ParameterError(
            "gpus",
            f"GPU {missing[0] if missing else '(none)'} is not visible "
            f"(this machine has {count} CUDA device(s)); list indices below that",
        )
    return min(int(torch.cuda.get_device_properties(g).total_memory) for g in gpus)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_packing(
    definition: StudyDefinition,
    *,
    gpus: Sequence[int],
    num_classes: int | None = None,
    storage: StorageLocation | None = None,
    gpu_bytes: int | None = None,
    cpu_count: int | None = None,
) -> PackingDecision:
    """The ``auto`` decision for running ``definition`` on ``gpus`` (device indices).

    ``per_trial_bytes`` is :func:`study_train_bytes` (``num_classes`` as there) plus, unless
    ``[train] cache = "off"``, the device-cache reserve ``DEVICE_CACHE_FRACTION × gpu_bytes``
    (the most ``cache = "auto"`` lets a trial keep on the GPU); ``gpu_bytes`` (bytes) defaults
    to :func:`gpu_memory_bytes` (not queried for a surrogate objective, whose trials use no
    GPU), ``cpu_count`` to :func:`available_cpus`. An SQLite ``storage`` lowers the cap so that
    all ``len(gpus) × M`` workers stay within its worker limit.
    """
    if not gpus:
        raise ValueError("gpus: auto packing needs at least one GPU")
    per_trial = study_train_bytes(definition, num_classes=num_classes)
    if gpu_bytes is None:
        gpu_bytes = gpu_memory_bytes(gpus) if per_trial else 0
    if per_trial and definition.train.cache != "off":
        per_trial += int(DEVICE_CACHE_FRACTION * gpu_bytes)
    cap, cap_reason = MAX_TRIALS_PER_GPU, ""
    if storage is not None and storage.kind == "sqlite":
        per_gpu = max(1, SQLITE_MAX_WORKERS // len(gpus))
        if per_gpu < cap:
            cap, cap_reason = (
                per_gpu,
                (f"SQLite storage: at most {SQLITE_MAX_WORKERS} workers over {len(gpus)} GPUs"),
            )
    return choose_trials_per_gpu(
        per_trial_bytes=per_trial,
        gpu_bytes=gpu_bytes,
        cpu_count=available_cpus() if cpu_count is None else cpu_count,
        num_gpus=len(gpus),
        cap=cap,
        cap_reason=cap_reason,
    )


def given_record(trials_per_gpu: int) -> dict[str, Any]:
    """The study's ``packing`` user attr for a run with ``trials_per_gpu`` given by hand."""
    return {
        "auto": False,
        "trials_per_gpu": trials_per_gpu,
        "reason": f"{_trials(trials_per_gpu)} per GPU (given: --trials-per-gpu or "
        "[execution] trials_per_gpu)",
    }


def decide_packing(
    definition: StudyDefinition,
    *,
    gpus: Sequence[int],
    trials_per_gpu: int | str,
    num_classes: int | None = None,
    storage: StorageLocation | None = None,
    cpu_count: int | None = None,
    quiet: bool = False,
) -> tuple[int, dict[str, Any]]:
    """``(M, record)`` for a run on ``gpus``: with ``trials_per_gpu = "auto"``,
    :func:`resolve_packing`'s choice (its reason printed unless ``quiet``), else the given
    number; ``record`` is the study's ``packing`` user attr. Both runners use this."""
    if trials_per_gpu != AUTO:
        return int(trials_per_gpu), given_record(int(trials_per_gpu))
    decision = resolve_packing(
        definition, gpus=gpus, num_classes=num_classes, storage=storage, cpu_count=cpu_count
    )
    if not quiet:
        print(f"effscale search: {decision.reason}", flush=True)
    return decision.trials_per_gpu, decision.to_dict()


def check_trials_per_gpu(value: Any) -> int | str:
    """``value`` if it is ``"auto"`` or an integer >= 1, else a ``ValueError`` naming
    ``--trials-per-gpu`` and the fix."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ParameterError(
        "trials_per_gpu",
        f"must be auto or an integer >= 1, got {value!r}",
        "give `trials_per_gpu` auto or e.g. 4",
    )
