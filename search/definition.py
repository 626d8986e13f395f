"""A study's definition: its typed, validated sections, and the fingerprint of what its trials
mean.

:class:`StudyDefinition` is what a study file reads into (:mod:`.study_file`), and what every
other part of the search takes. It is frozen; :meth:`StudyDefinition.replace` makes a changed
copy, checks it again and renders its study-file text anew, so that the fingerprint and the text
stored with a study always describe the definition that ran.

The fingerprint hashes the sections that decide what a trial means (base, space, constraint,
objective, data, train without its speed levers, and the study's sampler, objectives and seeds),
computed from the typed values: comments, key order and number spelling in the file do not
change it, any changed value does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from effscale.detector.data.layout import CocoSplit
from effscale.detector.scaling import BifpnRule

from .errors import ParameterError
from .space import (
    Choices,
    CostConstraint,
    Fixed,
    Param,
    SearchSpace,
    grid_search_space,
    grid_size,
)
from .storage.urls import default_storage_url
from .surrogate import SurrogateConstants

__all__ = [
    "SAMPLERS",
    "MAX_SEEDS",
    "MAX_TRIALS",
    "MAX_SEED",
    "OBJECTIVE_NAMES",
    "OBJECTIVE_KINDS",
    "BACKENDS",
    "DEVICES",
    "OPTIMIZERS",
    "PRUNER_OPTIONS",
    "SPEED_KEYS",
    "CACHES",
    "COMPILE_MODES",
    "StudySection",
    "BaseSection",
    "GenerateSpec",
    "DataSection",
    "TrainSection",
    "PrunerSection",
    "ObjectiveSection",
    "ExecutionSection",
    "StudyDefinition",
    "check_definition",
    "render_study_text",
]

SAMPLERS = ("tpe", "grid", "gp", "nsga2", "random")
OBJECTIVE_NAMES = ("ap", "macs")
OBJECTIVE_KINDS = ("train", "surrogate")
BACKENDS = ("optuna", "ray")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adamw")
#: each pruner kind and its options (name -> allowed python types)
PRUNER_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "none": {},
    "median": {"n_startup_trials": (int,), "n_warmup_steps": (int,), "interval_steps": (int,)},
    "hyperband": {"min_resource": (int,), "max_resource": (int, str), "reduction_factor": (int,)},
    "successive_halving": {
        "min_resource": (int, str),
        "reduction_factor": (int,),
        "min_early_stopping_rate": (int,),
    },
}
#: the most training seeds per point in a study (more go through ``effscale confirm``)
MAX_SEEDS = 16
#: the largest ``n_trials`` and ``seed`` a study takes (a sampler's seed must stay below 2^32
#: with the worker index added; more trials than this no sampler or storage here handles)
MAX_TRIALS = 100_000
MAX_SEED = 2**31 - 1
#: ``[train]`` keys that change a trial's speed, not its meaning (not in the fingerprint)
SPEED_KEYS = ("cache", "cuda_graph", "compile", "channels_last", "fused_optimizer", "check_every")
#: ``[train] cache`` values and ``[train] compile`` values
CACHES = ("auto", "device", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class StudySection:
    """``[study]``: the study's ``name``, ``storage`` URL (``None``: the default file next to the
    study file), ``sampler``, ``seed`` (the sampler's), ``n_trials`` (finished trials wanted;
    ``None`` for a grid: all points), ``objectives`` (``("ap",)`` or ``("ap", "macs")``) and
    ``seeds``: the training seeds, each point being trained once per seed on the same data (its
    value is the mean AP)."""

    name: str
    storage: str | None
    sampler: str = "tpe"
    seed: int | None = None
    n_trials: int | None = None
    objectives: tuple[str, ...] = ("ap",)
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class BaseSection:
    """``[base]``: the model the proxy is made from, and how far it is scaled down.

    The proxy (the search's φ=0 model) is the base scaled to ``phi_proxy`` with the paper's
    rules (coefficients 1.2/1.1/1.15, BiFPN width ×1.35 and +1 cell per φ), with ``resolution``
    (pixels) overriding its input side. It is the same for every trial; the φ=1 model grows from
    it by the trial's multipliers. ``backbone_width``/``backbone_depth`` are multipliers over B0,
    ``resolution_base`` is in pixels, ``num_classes`` ``None`` means "from the data".
    ``pretrained``: ImageNet weights for every trained model's backbone, a timm EfficientNet
    name (``str``) or a state-dict file (``Path``, absolute); accepted only when every φ=1
    model of the space has the weights' backbone (see ``effscale.detector.pretrained``).
    """

    preset: str | None
    backbone_width: float
    backbone_depth: float
    bifpn: BifpnRule
    resolution_base: int
    phi_proxy: float
    resolution: int | None = None
    num_classes: int | None = None
    fusion: str = "fastattn"
    pretrained: str | Path | None = None


@dataclass(frozen=True)
class GenerateSpec:
    """``[data] generate``: synthetic COCO data (``effscale.detector.data.synthetic``) made on
    first use: counts of images, the seed, the image side in pixels, the number of shape classes,
    and the objects' long side (``min_object_size`` to ``max_object_size`` pixels; ``None``:
    half the image side) and count (1 to ``max_objects`` per image)."""

    train: int
    val: int
    seed: int = 0
    image_size: int = 96
    num_classes: int = 6
    min_object_size: int = 8
    max_object_size: int | None = None
    max_objects: int = 8


@dataclass(frozen=True)
class DataSection:
    """``[data]``: a COCO folder ``dir`` (absolute), ``generate``, or both splits where they lie,
    ``train`` and ``val`` (each a :class:`~effscale.detector.data.layout.CocoSplit`: an
    annotation file and an image folder, absolute); ``subset_train`` and ``subset_val`` cap the
    number of images used (``None``: all)."""

    dir: Path | None = None
    generate: GenerateSpec | None = None
    subset_train: int | None = None
    subset_val: int | None = None
    train: CocoSplit | None = None
    val: CocoSplit | None = None

    def splits(self) -> dict[str, CocoSplit]:
        """The splits given where they lie, by name (``train``, ``val``; empty for ``dir`` or
        ``generate``)."""
        return {
            name: files
            for name, files in (("train", self.train), ("val", self.val))
            if files is not None
        }


@dataclass(frozen=True)
class TrainSection:
    """``[train]``: the proxy training budget (exactly one of ``epochs``, ``steps``, ``seconds``
    for ``objective.kind = "train"``), ``batch_size`` (images, >= 2 for BatchNorm), ``lr``,
    ``optimizer``, ``device`` (auto|cpu|cuda) and data-loader ``num_workers``; and the speed
    levers of ``effscale.detector.train.TrainSettings`` / ``DataSettings``: ``cache``
    (auto|device|off), ``cuda_graph`` and ``fused_optimizer`` (true|false|"auto"), ``compile``
    (off or a ``torch.compile`` mode), ``channels_last`` and ``check_every`` (steps or "auto").
    The levers change how fast a trial trains, not what it means: they are left out of the
    fingerprint."""

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"
    device: str = "auto"
    num_workers: int = 0
    cache: str = "auto"
    cuda_graph: bool | str = "auto"
    compile: str = "off"
    channels_last: bool = False
    fused_optimizer: bool | str = "auto"
    check_every: int | str = "auto"

    def speed_settings(self) -> dict[str, Any]:
        """The step levers as ``TrainSettings`` keywords."""
        return {
            "cuda_graph": self.cuda_graph,
            "compile": self.compile,
            "channels_last": self.channels_last,
            "fused_optimizer": self.fused_optimizer,
            "check_every": self.check_every,
        }

    def budget(self) -> dict[str, Any]:
        """The training budget as ``TrainSettings`` keywords (empty when none is set)."""
        return {
            name: value
            for name in ("epochs", "steps", "seconds")
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True)
class PrunerSection:
    """``[pruner]``: ``kind`` and its ``options`` as sorted (name, value) pairs."""

    kind: str = "none"
    options: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the Optuna pruner."""
        return dict(self.options)


@dataclass(frozen=True)
class ObjectiveSection:
    """``[objective]``: ``kind`` ``train`` (real proxy training) or ``surrogate`` (analytic,
    with ``surrogate`` constants)."""

    kind: str = "train"
    surrogate: SurrogateConstants | None = None


@dataclass(frozen=True)
class ExecutionSection:
    """``[execution]``: ``backend``, parallel ``workers``, ``gpus`` (device indices) and
    ``trials_per_gpu`` (concurrent trials per GPU: an integer >= 1, or ``"auto"``, the default:
    chosen from the GPU's memory, the CPU cores and the largest trial, see :mod:`.packing`);
    the command line overrides each.

    Ray backend only (see ``docs/cluster.md``): ``address`` of a running cluster (``"auto"`` or
    ``host:port``; ``None`` starts a local Ray), ``cpus_per_trial`` and ``gpus_per_trial``
    (fractions below 1 share a device; ``None``: ``1 / trials_per_gpu`` with ``gpus``, else 0),
    ``max_concurrent`` trials (``None``: as many as the cluster fits), ``max_failures`` (retries
    of a crashed trial) and ``storage_path``, the folder of Ray Tune's experiment state (absolute;
    ``None``: ``<study-file-stem>.ray`` next to the study file)."""

    backend: str = "optuna"
    workers: int = 1
    gpus: tuple[int, ...] = ()
    trials_per_gpu: int | str = "auto"
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 1
    storage_path: Path | None = None


_Definition = TypeVar("_Definition", bound="StudyDefinition")


@dataclass(frozen=True)
class StudyDefinition:
    """A whole, validated study. ``path`` is the study file (absolute); ``text`` its TOML text
    (as read, or rendered by :meth:`replace`)."""

    path: Path
    text: str = dataclasses.field(compare=False, repr=False)
    study: StudySection
    base: BaseSection
    space: SearchSpace
    constraint: CostConstraint
    data: DataSection | None
    train: TrainSection
    pruner: PrunerSection
    objective: ObjectiveSection
    execution: ExecutionSection

    @property
    def folder(self) -> Path:
        """The study file's folder: relative paths in the file start here."""
        return self.path.parent

    @property
    def storage_url(self) -> str:
        """``study.storage``, or the default ``sqlite:///<stem>.db`` (relative to :attr:`folder`)."""
        return self.study.storage or default_storage_url(self.path)

    @property
    def directions(self) -> tuple[str, ...]:
        """Optuna directions of the objectives: AP is maximized, MACs minimized."""
        return tuple("maximize" if name == "ap" else "minimize" for name in self.study.objectives)

    def grid(self) -> dict[str, list[Any]]:
        """The ``GridSampler`` axes of this space (see :func:`.space.grid_search_space`)."""
        return grid_search_space(self.space, self.constraint)

    def target_trials(self) -> int:
        """How many finished (complete or pruned) trials the study wants."""
        if self.study.n_trials is not None:
            return self.study.n_trials
        return grid_size(self.grid())

    def fingerprint(self) -> str:
        """A hash of what decides the meaning of a trial (see the module docstring); a study
        resumed with a different one would mix incomparable trials."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in SPEED_KEYS}
        data = None if self.data is None else dataclasses.asdict(self.data)
        if data is not None and self.data is not None and self.data.dir is not None:
            data["dir"] = _relative(self.data.dir, self.folder)
        if data is not None and self.data is not None:
            for name in ("train", "val"):  # absent unless given: older fingerprints stay valid
                files = data.pop(name)
                if files is not None:
                    data[name] = _split_table(getattr(self.data, name), self.folder)
        base = dataclasses.asdict(self.base)
        if base.pop("pretrained") is not None:  # absent unless given: older fingerprints stay
            base["pretrained"] = _pretrained_value(self.base.pretrained, self.folder)
        keyed = {
            "base": base,
            "space": _space_table(self.space),
            "constraint": dataclasses.asdict(self.constraint),
            "objective": dataclasses.asdict(self.objective),
            "data": data,
            "train": train,
            "study": {
                "sampler": self.study.sampler,
                "objectives": list(self.study.objectives),
                "seeds": list(self.study.seeds),
            },
        }
        text = json.dumps(keyed, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self: _Definition, **sections: Any) -> _Definition:
        """A copy with the given sections replaced (``study=``, ``train=``, ...; build them with
        ``dataclasses.replace``), checked by :func:`check_definition` and with its study-file
        text rendered anew (:func:`render_study_text`). Raises :class:`.ParameterError`."""
        changed = dataclasses.replace(self, **sections)
        check_definition(changed)
        return dataclasses.replace(changed, text=render_study_text(changed))


def check_definition(d: StudyDefinition) -> None:
    """The rules between sections; raises :class:`.ParameterError` naming the key."""
    sampler = d.study.sampler
    if d.constraint.mode == "band" and sampler in ("gp", "nsga2"):
        raise ParameterError(
            "constraint.mode",
            f'band with sampler = "{sampler}" hides the infeasible samples from it (Optuna '
            "5.0's GP and NSGA-II learn only from COMPLETE trials; infeasible ones end PRUNED)",
            'use mode = "solve" or sampler = "tpe"',
        )
    if len(d.study.objectives) > 1 and d.pruner.kind != "none":
        raise ParameterError(
            "pruner.kind",
            "Optuna cannot prune multi-objective studies",
            'set kind = "none" or objectives = ["ap"]',
        )
    if sampler == "grid":
        points = grid_size(d.grid())
        if d.study.n_trials is not None and d.study.n_trials > points:
            raise ParameterError(
                "study.n_trials",
                f"{d.study.n_trials} exceeds the {points} grid points (a grid point never "
                "runs twice)",
                f"drop n_trials or set it <= {points}",
            )
    elif d.study.n_trials is None:
        raise ParameterError("study.n_trials", "missing", "add n_trials = 40 to [study]")
    if d.objective.kind == "train" and d.data is None:
        raise ParameterError(
            "data",
            'missing (objective.kind = "train" trains on it)',
            'add [data] dir = "path/to/coco" or [data] generate = {train = 200, val = 50}',
        )


# ------------------------------------------------------------------------------- rendering


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _param_value(param: Param) -> Any:
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Choices):
        return list(param.values)
    table: dict[str, Any] = {"low": param.low, "high": param.high}
    if param.step is not None:
        table["step"] = param.step
    return table


def _space_table(space: SearchSpace) -> dict[str, Any]:
    return {f.name: _param_value(getattr(space, f.name)) for f in dataclasses.fields(space)}


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if v is not None}


def _base_table(base: BaseSection, folder: Path) -> dict[str, Any]:
    table: dict[str, Any]
    if base.preset is not None:
        table = {"preset": base.preset}
    else:
        table = {
            "backbone_width": base.backbone_width,
            "backbone_depth": base.backbone_depth,
            "resolution_base": base.resolution_base,
            "bifpn": {
                "width_base": base.bifpn.width_base,
                "depth_base": base.bifpn.depth_base,
                "head_depth_base": base.bifpn.head_depth_base,
                "head_depth_period": base.bifpn.head_depth_period,
            },
        }
    table.update(
        phi_proxy=base.phi_proxy,
        resolution=base.resolution,
        num_classes=base.num_classes,
        fusion=base.fusion,
        pretrained=_pretrained_value(base.pretrained, folder),
    )
    return _without_none(table)


def _pretrained_value(value: str | Path | None, folder: Path) -> str | None:
    """``[base] pretrained`` as written: a timm name, or a file relative to the study folder."""
    return _relative(value, folder) if isinstance(value, Path) else value


def _split_table(files: CocoSplit, folder: Path) -> dict[str, str]:
    return {
        "annotations": _relative(files.annotations, folder),
        "images": _relative(files.images, folder),
    }


def _data_table(data: DataSection, folder: Path) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if data.dir is not None:
        table["dir"] = _relative(data.dir, folder)
    for name, files in data.splits().items():
        table[name] = _split_table(files, folder)
    if data.generate is not None:
        table["generate"] = _without_none(dataclasses.asdict(data.generate))
    subset = _without_none({"train": data.subset_train, "val": data.subset_val})
    if subset:
        table["subset"] = subset
    return table


def _objective_table(objective: ObjectiveSection) -> dict[str, Any]:
    table: dict[str, Any] = {"kind": objective.kind}
    s = objective.surrogate
    if s is not None:
        axes = ("depth", "width", "resolution")
        table["surrogate"] = {
            "A": s.A,
            "c": dict(zip(axes, s.c)),
            "p": dict(zip(axes, s.p)),
            "noise": s.noise,
        }
    return table


def _execution_table(ex: ExecutionSection, folder: Path) -> dict[str, Any]:
    table = dataclasses.asdict(ex)
    table["gpus"] = list(ex.gpus)
    if ex.storage_path is not None:
        table["storage_path"] = _relative(ex.storage_path, folder)
    return _without_none(table)


def render_study_text(d: StudyDefinition) -> str:
    """The study-file TOML text of ``d`` (paths relative to its folder); reading it back gives
    an equal definition."""
    document: dict[str, Any] = {
        "study": _without_none(
            {
                "name": d.study.name,
                "storage": d.study.storage,
                "sampler": d.study.sampler,
                "seed": d.study.seed,
                "n_trials": d.study.n_trials,
                "objectives": list(d.study.objectives),
                "seeds": list(d.study.seeds),
            }
        ),
        "base": _base_table(d.base, d.folder),
        "space": _space_table(d.space),
        "constraint": dataclasses.asdict(d.constraint),
        "train": _without_none(dataclasses.asdict(d.train)),
        "pruner": {"kind": d.pruner.kind, **dict(d.pruner.options)},
        "objective": _objective_table(d.objective),
        "execution": _execution_table(d.execution, d.folder),
    }
    if d.data is not None:
        document["data"] = _data_table(d.data, d.folder)
    for value in _floats(document):
        if not math.isfinite(value):
            raise ParameterError(
                "definition", f"holds a non-finite number ({value})", "give finite values"
            )
    return f"# {d.study.name}: rendered by effscale\n\n" + tomli_w.dumps(document)


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in _floats(v)]
    return []
