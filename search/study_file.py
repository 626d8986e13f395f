"""Study files: a TOML file describing one scaling search, read into a
:class:`~.definition.StudyDefinition`.

Every key is checked before anything touches a storage: unknown keys, wrong types, empty ranges,
coefficients below 1 and missing data are errors of one line that name the key and the fix,
prefixed by the file name. Paths in the file (``data.dir``, sqlite and journal storages) are
relative to the study file's folder.

Sections (see ``studies/*.toml`` for commented examples)::

    [study]      name, storage, sampler (tpe|grid|gp|nsga2|random), seed, n_trials,
                 objectives (["ap"] or ["ap", "macs"])
    [base]       preset = "d0" .. "d7", or backbone_width, backbone_depth, resolution_base and
                 bifpn = {width_base, depth_base, head_depth_base, head_depth_period};
                 phi_proxy, resolution (pixels, overrides the proxy's), num_classes, fusion,
                 pretrained (a timm EfficientNet name or a weights file; every φ=1 backbone
                 of the space must fit it)
    [space]      alpha, beta, gamma, width_growth, depth_step, fusion: a value, a list (grid
                 axis / choices) or a range {low, high, step?}
    [constraint] target (2.0), tolerance (0.05, > 0), kind (formula|measured), mode (band|solve)
    [data]       dir = "coco/folder", generate = {train, val, seed, image_size, num_classes}
                 or train = {annotations = "x.json", images = "dir"} and val = {...};
                 subset = {train, val}
    [train]      one of epochs|steps|seconds; batch_size, lr, optimizer, device, num_workers
    [pruner]     kind = none|median|hyperband|successive_halving, plus that pruner's options
    [objective]  kind = train|surrogate; [objective.surrogate] A, c, p, noise
    [execution]  backend = optuna|ray, workers, gpus, trials_per_gpu ("auto" or M); for ray
                 also address, cpus_per_trial, gpus_per_trial, max_concurrent, max_failures,
                 storage_path
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from effscale.detector.config import FUSION_METHODS, PRESET_NAMES, preset
from effscale.detector.data.layout import CocoSplit
from effscale.detector.pretrained import PretrainedError, check_pretrained_fits, is_weights_file
from effscale.detector.scaling import PHI_RANGE, RESOLUTION_MULTIPLE, BifpnRule, round_resolution

from .definition import (
    BACKENDS,
    CACHES,
    COMPILE_MODES,
    DEVICES,
    MAX_SEED,
    MAX_SEEDS,
    MAX_TRIALS,
    OBJECTIVE_KINDS,
    OPTIMIZERS,
    PRUNER_OPTIONS,
    SAMPLERS,
    SPEED_KEYS,
    BaseSection,
    DataSection,
    ExecutionSection,
    GenerateSpec,
    ObjectiveSection,
    PrunerSection,
    StudyDefinition,
    StudySection,
    TrainSection,
    check_definition,
)
from .errors import ParameterError
from .family import build_configs, check_buildable, corner_points
from .space import (
    CONSTRAINT_KINDS,
    CONSTRAINT_MODES,
    Choices,
    CostConstraint,
    Fixed,
    Param,
    Range,
    SearchSpace,
)
from .surrogate import SurrogateConstants

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["StudyFileError", "load_study_file", "parse_study_text"]


class StudyFileError(ValueError):
    """A study file problem; the message is one line naming the file, the key and the fix."""


_KeyError = ParameterError

#: budgets and worker counts beyond which a value is a typo, not a study (the training's own
#: limits are ``effscale.detector.train.MAX_EPOCHS`` / ``MAX_STEPS``)
_MAX_EPOCHS = 100_000
_MAX_STEPS = 1_000_000_000
_MAX_WORKERS = 1024


_MISSING = object()


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Table:
    """One TOML table being read: unknown keys are rejected up front, each read is typed."""

    def __init__(self, data: Any, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise _KeyError(
                where,
                f"must be a table, got {_type_name(data)}",
                f"write [{where}] followed by key = value lines",
            )
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise _KeyError(
                self._join(where, unknown[0]),
                "unknown key",
                f"allowed keys are {', '.join(allowed)}",
            )
        self.data = data
        self.where = where

    @staticmethod
    def _join(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def key(self, name: str) -> str:
        return self._join(self.where, name)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise _KeyError(self.key(name), "missing", f"add {name} = ... to [{self.where}]")
        return default

    def int(
        self, name: str, default: Any = _MISSING, *, low: int | None = None, high: int | None = None
    ) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not _is_int(value):
            raise _KeyError(
                self.key(name),
                f"must be an integer, got {value!r} ({_type_name(value)})",
                f"write {name} = {low if low else 1}",
            )
        if low is not None and value < low or high is not None and value > high:
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise _KeyError(
                self.key(name), f"must be {bounds}, got {value}", f"set {name} to a value {bounds}"
            )
        return value

    def number(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not _is_number(value):
            raise _KeyError(
                self.key(name),
                f"must be a number, got {value!r} ({_type_name(value)})",
                f"write {name} = 1.0",
            )
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if value not in choices:
            raise _KeyError(
                self.key(name), f"unknown value {value!r}", f"choose one of {', '.join(choices)}"
            )
        return value

    def table(self, name: str, allowed: tuple[str, ...]) -> _Table | None:
        if name not in self.data:
            return None
        return _Table(self.data[name], self.key(name), allowed)


# --------------------------------------------------------------------------------------------
# readers, one per section


def _read_study(table: _Table, stem: str) -> StudySection:
    name = table.raw("name", stem)
    if not isinstance(name, str) or not name.strip():
        raise _KeyError(
            table.key("name"), f"must be a non-empty string, got {name!r}", f'write name = "{stem}"'
        )
    storage = table.raw("storage", None)
    if storage is not None and not isinstance(storage, str):
        raise _KeyError(
            table.key("storage"),
            f"must be a URL string, got {_type_name(storage)}",
            f'write storage = "sqlite:///{stem}.db"',
        )
    seed = table.int("seed", None, low=0, high=MAX_SEED)
    n_trials = table.int("n_trials", None, low=1, high=MAX_TRIALS)
    seeds = _read_seeds(table)
    objectives = table.raw("objectives", ["ap"])
    if (
        not isinstance(objectives, list)
        or not objectives
        or tuple(objectives) not in (("ap",), ("ap", "macs"))
    ):
        raise _KeyError(
            table.key("objectives"),
            f"unsupported value {objectives!r}",
            'write objectives = ["ap"] or ["ap", "macs"] (a Pareto front)',
        )
    return StudySection(
        name=name,
        storage=storage,
        sampler=table.choice("sampler", SAMPLERS, "tpe"),
        seed=seed,
        n_trials=n_trials,
        objectives=tuple(objectives),
        seeds=seeds,
    )


def _read_seeds(table: _Table) -> tuple[int, ...]:
    """``[study] seeds``: the training seeds every point is trained with (distinct integers)."""
    seeds = table.raw("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(_is_int(s) and 0 <= s < 2**31 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _KeyError(
            table.key("seeds"),
            f"must be a list of distinct integers in [0, 2^31), got {seeds!r}",
            "write seeds = [0, 1, 2] (each point is trained once per seed)",
        )
    if len(seeds) > MAX_SEEDS:
        raise _KeyError(
            table.key("seeds"),
            f"{len(seeds)} seeds, more than {MAX_SEEDS} per point",
            "use a few seeds here and `effscale confirm` for the best points",
        )
    return tuple(seeds)


def _read_base(table: _Table, folder: Path) -> BaseSection:
    spec_keys = ("backbone_width", "backbone_depth", "bifpn", "resolution_base")
    given = [k for k in spec_keys if table.has(k)]
    phi_proxy = table.number("phi_proxy", 0.0)
    if not (PHI_RANGE[0] <= phi_proxy <= PHI_RANGE[1] - 1):
        raise _KeyError(
            table.key("phi_proxy"),
            f"must be in [{PHI_RANGE[0]:g}, {PHI_RANGE[1] - 1:g}], got {phi_proxy:g}",
            "use a small negative value such as -2 for a cheap proxy",
        )
    resolution = table.int("resolution", None, low=32, high=4096)
    if resolution is not None and resolution % RESOLUTION_MULTIPLE:
        raise _KeyError(
            table.key("resolution"),
            f"must be a multiple of {RESOLUTION_MULTIPLE} pixels, got {resolution}",
            f"use {round_resolution(resolution)}",
        )
    num_classes = table.int("num_classes", None, low=1)
    fusion_default = "fastattn"
    if table.has("preset"):
        if given:
            raise _KeyError(
                table.key(given[0]),
                "given together with preset",
                "give either preset or the spec keys " + ", ".join(spec_keys),
            )
        name = table.choice("preset", PRESET_NAMES)
        official = preset(name)
        bifpn = BifpnRule(
            width_base=float(official.fpn.channels),
            depth_base=float(official.fpn.repeats),
            head_depth_base=official.head.repeats,
        )
        width = official.backbone.width_multiplier
        depth = official.backbone.depth_multiplier
        resolution_base = official.image_size[0]
        fusion_default = official.fpn.fusion
    else:
        name = None
        width = table.number("backbone_width", 1.0)
        depth = table.number("backbone_depth", 1.0)
        for key, value in (("backbone_width", width), ("backbone_depth", depth)):
            if not 0.05 <= value <= 8:
                raise _KeyError(
                    table.key(key), f"must be in [0.05, 8], got {value:g}", "1.0 is EfficientNet-B0"
                )
        resolution_base = table.int("resolution_base", 512, low=32, high=4096)
        bifpn = _read_bifpn(
            table.table(
                "bifpn", ("width_base", "depth_base", "head_depth_base", "head_depth_period")
            )
        )
    return BaseSection(
        preset=name,
        backbone_width=width,
        backbone_depth=depth,
        bifpn=bifpn,
        resolution_base=resolution_base,
        phi_proxy=phi_proxy,
        resolution=resolution,
        num_classes=num_classes,
        fusion=table.choice("fusion", FUSION_METHODS, fusion_default),
        pretrained=_read_pretrained(table, folder),
    )


def _read_pretrained(table: _Table, folder: Path) -> str | Path | None:
    """``[base] pretrained``: a timm model name as written, or a weights file (absolute)."""
    if not table.has("pretrained"):
        return None
    raw = table.raw("pretrained")
    if not isinstance(raw, str) or not raw.strip():
        raise _KeyError(
            table.key("pretrained"),
            f"must be a string, got {raw!r}",
            'write pretrained = "tf_efficientnet_b0" or a weights file (relative to the study file)',
        )
    if not is_weights_file(raw):
        return raw
    path = (folder / raw).expanduser().resolve()
    if not path.is_file():
        raise _KeyError(
            table.key("pretrained"),
            f"{path} is not a file",
            "point it at a state-dict file (relative to the study file) or name a timm model",
        )
    return path


def _check_pretrained(d: StudyDefinition) -> None:
    """``[base] pretrained`` fits the backbone of every φ=1 model the space can sample (the
    models trials train), checked before any trial. Backbone layers grow monotonically with
    alpha and beta, so the space's two corners fitting the same weights means every point
    does."""
    if d.base.pretrained is None:
        return
    if d.objective.kind != "train":
        raise _KeyError(
            "base.pretrained",
            f'nothing is trained with objective.kind = "{d.objective.kind}"',
            "drop pretrained or train the trials",
        )
    for corner, point in zip(("smallest", "largest"), corner_points(d.space, d.constraint)):
        _, phi1 = build_configs(d.base, point, num_classes=d.base.num_classes or 90)
        try:
            check_pretrained_fits(phi1.backbone, d.base.pretrained, padding=phi1.padding)
        except PretrainedError as exc:
            raise _KeyError(
                "base.pretrained",
                f"at the {corner} point of the space (alpha {point.alpha:g}, beta "
                f"{point.beta:g}): {exc.problem}",
                f"{exc.fix}; the weights must fit every trained φ=1 model, so fix alpha and "
                "beta (or narrow them) to values whose backbone is the weights'",
            ) from None


def _read_bifpn(table: _Table | None) -> BifpnRule:
    if table is None:
        return BifpnRule()
    width = table.number("width_base", 64.0)
    depth = table.number("depth_base", 3.0)
    head = table.int("head_depth_base", 3, low=1)
    period = table.number("head_depth_period", 3.0)
    if width < 8:
        raise _KeyError(
            table.key("width_base"), f"must be >= 8 channels, got {width:g}", "64 is D0"
        )
    if depth < 1:
        raise _KeyError(table.key("depth_base"), f"must be >= 1 cell, got {depth:g}", "3 is D0")
    if period <= 0:
        raise _KeyError(
            table.key("head_depth_period"), f"must be > 0, got {period:g}", "3 is the paper's"
        )
    return BifpnRule(
        width_base=width, depth_base=depth, head_depth_base=head, head_depth_period=period
    )


_NUMERIC_BOUNDS = {
    "alpha": (1.0, 4.0, "a coefficient below 1 shrinks the model as phi grows"),
    "beta": (1.0, 4.0, "a coefficient below 1 shrinks the model as phi grows"),
    "gamma": (1.0, 4.0, "a coefficient below 1 shrinks the model as phi grows"),
    "width_growth": (1.0, 4.0, "the BiFPN width must not shrink with phi"),
    "depth_step": (0.0, 4.0, "BiFPN cells added per unit of phi"),
}


def _check_value(key: str, name: str, value: Any) -> Any:
    if name == "fusion":
        if value not in FUSION_METHODS:
            raise _KeyError(
                key, f"unknown fusion {value!r}", f"choose from {', '.join(FUSION_METHODS)}"
            )
        return value
    low, high, why = _NUMERIC_BOUNDS[name]
    if not _is_number(value):
        raise _KeyError(
            key,
            f"must be a number, got {value!r} ({_type_name(value)})",
            f"write e.g. {name} = {{low = {low:g}, high = {low + 0.4:g}}}",
        )
    if not low <= value <= high:
        raise _KeyError(
            key,
            f"must be in [{low:g}, {high:g}] ({why}), got {value:g}",
            f"set it within [{low:g}, {high:g}]",
        )
    return float(value)


def _read_param(table: _Table, name: str, default: Any) -> Param:
    key = table.key(name)
    value = table.raw(name, default)
    if value is _MISSING:
        raise _KeyError(key, "missing", f"add {name} = {{low = 1.0, high = 1.4}} to [space]")
    if isinstance(value, Param.__args__):  # a default
        return value
    if isinstance(value, list):
        if not value:
            raise _KeyError(key, "empty list", f"list at least one value or drop {name}")
        values = tuple(_check_value(f"{key}[{i}]", name, v) for i, v in enumerate(value))
        if len(set(values)) != len(values):
            raise _KeyError(key, f"repeated values in {value!r}", "list each value once")
        return Choices(values)
    if isinstance(value, dict):
        if name == "fusion":
            raise _KeyError(
                key,
                "a range is not allowed",
                f"list the choices: fusion = [{', '.join(repr(f) for f in FUSION_METHODS)}]",
            )
        sub = _Table(value, key, ("low", "high", "step"))
        low = _check_value(sub.key("low"), name, sub.raw("low"))
        high = _check_value(sub.key("high"), name, sub.raw("high"))
        if not low < high:
            raise _KeyError(
                key,
                f"empty range: low ({low:g}) must be < high ({high:g})",
                f"swap them, or fix the value with {name} = {low:g}",
            )
        step = sub.number("step", None)
        if step is not None:
            if not 0 < step <= high - low:
                raise _KeyError(
                    sub.key("step"),
                    f"must be in (0, high - low = {high - low:g}], got {step:g}",
                    "pick a smaller step",
                )
            count = (high - low) / step
            if abs(count - round(count)) > 1e-6:
                raise _KeyError(
                    sub.key("step"),
                    f"(high - low) = {high - low:g} is not a multiple of step = {step:g}",
                    "adjust high or step so that the points end at high",
                )
        return Range(low, high, step)
    return Fixed(_check_value(key, name, value))


def _read_space(table: _Table, mode: str, fusion: str) -> SearchSpace:
    if mode == "solve":
        gamma = _read_param(table, "gamma", Range(1.0, 2.0))
        if not isinstance(gamma, Range):
            raise _KeyError(
                table.key("gamma"),
                'mode = "solve" derives gamma, so it takes only bounds',
                "write gamma = {low = 1.0, high = 2.0} or drop gamma",
            )
    else:
        gamma = _read_param(table, "gamma", _MISSING)
    return SearchSpace(
        alpha=_read_param(table, "alpha", _MISSING),
        beta=_read_param(table, "beta", _MISSING),
        gamma=gamma,
        width_growth=_read_param(table, "width_growth", Fixed(1.35)),
        depth_step=_read_param(table, "depth_step", Fixed(1.0)),
        fusion=_read_param(table, "fusion", Fixed(fusion)),
    )


def _read_constraint(table: _Table) -> CostConstraint:
    target = table.number("target", 2.0)
    if target <= 1:
        raise _KeyError(
            table.key("target"),
            f"must be > 1 (the phi=1 model costs more than phi=0), got {target:g}",
            "EfficientNet uses target = 2.0",
        )
    tolerance = table.number("tolerance", 0.05)
    if not 0 < tolerance < 1:
        raise _KeyError(
            table.key("tolerance"),
            f"must be in (0, 1), got {tolerance:g}",
            "use a relative band such as tolerance = 0.05 (5%)",
        )
    return CostConstraint(
        target=target,
        tolerance=tolerance,
        kind=table.choice("kind", CONSTRAINT_KINDS, "measured"),
        mode=table.choice("mode", CONSTRAINT_MODES, "solve"),
    )


_SPLIT_EXAMPLE = (
    'train = {annotations = "annotations/instances_train2017.json", images = "train2017"}'
)


def _read_split(table: _Table, name: str, folder: Path) -> CocoSplit:
    """``[data] train`` or ``val``: ``{annotations = "x.json", images = "dir"}``, relative to
    the study file, the file and the folder present."""
    sub = _Table(table.raw(name), table.key(name), ("annotations", "images"))
    paths = {}
    for key, kind in (("annotations", "file"), ("images", "folder")):
        raw = sub.raw(key)
        if not isinstance(raw, str) or not raw:
            raise _KeyError(
                sub.key(key),
                f"must be a path string, got {raw!r}",
                f"write {_SPLIT_EXAMPLE} (relative to the study file)",
            )
        path = (folder / raw).resolve()
        present = path.is_file() if kind == "file" else path.is_dir()
        if not present:
            problem = "does not exist" if not path.exists() else f"is not a {kind}"
            what = "a COCO instances json" if kind == "file" else "the folder of its images"
            raise _KeyError(
                sub.key(key),
                f"{path} {problem}",
                f"point it at {what} (relative to the study file)",
            )
        paths[key] = path
    return CocoSplit(annotations=paths["annotations"], images=paths["images"])


def _read_data(table: _Table, folder: Path) -> DataSection:
    forms = [k for k in ("dir", "generate") if table.has(k)]
    forms += ["train/val"] if table.has("train") or table.has("val") else []
    if len(forms) != 1:
        raise _KeyError(
            table.where,
            "needs exactly one of dir, generate and train + val"
            + (f", got {' and '.join(forms)}" if forms else ""),
            'write dir = "path/to/coco", generate = {train = 200, val = 50} or '
            f"{_SPLIT_EXAMPLE} with val = {{...}}",
        )
    directory = generate = train = val = None
    if forms == ["train/val"]:
        for name in ("train", "val"):
            if not table.has(name):
                raise _KeyError(
                    table.key(name),
                    "missing (train and val are given together)",
                    f"add {name} = {{annotations = ..., images = ...}} to [data]",
                )
        train = _read_split(table, "train", folder)
        val = _read_split(table, "val", folder)
    elif table.has("dir"):
        raw = table.raw("dir")
        if not isinstance(raw, str) or not raw:
            raise _KeyError(
                table.key("dir"),
                f"must be a path string, got {raw!r}",
                'write dir = "path/to/coco" (relative to the study file)',
            )
        directory = (folder / raw).resolve()
        if not directory.is_dir():
            raise _KeyError(
                table.key("dir"),
                f"{directory} is not a folder",
                "point it at a COCO folder (relative to the study file)",
            )
    else:
        sub = _Table(
            table.raw("generate"),
            table.key("generate"),
            (
                "train",
                "val",
                "seed",
                "image_size",
                "num_classes",
                "min_object_size",
                "max_object_size",
                "max_objects",
            ),
        )
        image_size = sub.int("image_size", 96, low=32, high=4096)
        min_object = sub.int("min_object_size", 8, low=1, high=image_size)
        generate = GenerateSpec(
            train=sub.int("train", low=1),
            val=sub.int("val", low=1),
            seed=sub.int("seed", 0, low=0, high=MAX_SEED),
            image_size=image_size,
            num_classes=sub.int("num_classes", 6, low=1, high=8),
            min_object_size=min_object,
            max_object_size=sub.int("max_object_size", None, low=min_object, high=image_size),
            max_objects=sub.int("max_objects", 8, low=1, high=64),
        )
    subset_train = subset_val = None
    subset = table.table("subset", ("train", "val"))
    if subset is not None:
        sub = subset
        subset_train = sub.int("train", None, low=1)
        subset_val = sub.int("val", None, low=1)
    return DataSection(
        dir=directory,
        generate=generate,
        subset_train=subset_train,
        subset_val=subset_val,
        train=train,
        val=val,
    )


def _read_train(table: _Table, required: bool) -> TrainSection:
    budgets = [k for k in ("epochs", "steps", "seconds") if table.has(k)]
    if len(budgets) > 1:
        raise _KeyError(
            table.key(budgets[1]),
            f"given together with {budgets[0]}",
            "give exactly one budget: epochs, steps or seconds",
        )
    if required and not budgets:
        raise _KeyError(table.where, "no training budget", "add steps = 500 or epochs = 10")
    if required and "seconds" in budgets:
        raise _KeyError(
            table.key("seconds"),
            "a wall-clock budget depends on the machine's load, so the same study would train "
            "other models on another day",
            "give steps = N or epochs = N (effscale train keeps --seconds)",
        )
    seconds = table.number("seconds", None)
    if seconds is not None and seconds <= 0:
        raise _KeyError(table.key("seconds"), f"must be > 0, got {seconds:g}", "e.g. seconds = 60")
    lr = table.number("lr", 0.01)
    if lr <= 0:
        raise _KeyError(table.key("lr"), f"must be > 0, got {lr:g}", "e.g. lr = 0.01")
    return TrainSection(
        epochs=table.int("epochs", None, low=1, high=_MAX_EPOCHS),
        steps=table.int("steps", None, low=1, high=_MAX_STEPS),
        seconds=seconds,
        batch_size=table.int("batch_size", 16, low=2),
        lr=lr,
        optimizer=table.choice("optimizer", OPTIMIZERS, "sgd"),
        device=table.choice("device", DEVICES, "auto"),
        num_workers=table.int("num_workers", 0, low=0),
        cache=table.choice("cache", CACHES, "auto"),
        cuda_graph=_bool_or_auto(table, "cuda_graph"),
        compile=table.choice("compile", COMPILE_MODES, "off"),
        channels_last=bool(_bool_or_auto(table, "channels_last", default=False, auto=False)),
        fused_optimizer=_bool_or_auto(table, "fused_optimizer"),
        check_every=_int_or_auto(table, "check_every"),
    )


def _bool_or_auto(
    table: _Table, name: str, *, default: Any = "auto", auto: bool = True
) -> bool | str:
    value = table.raw(name, default)
    if isinstance(value, bool) or (auto and value == "auto"):
        return value
    allowed, example = ('true, false or "auto"', '"auto"') if auto else ("true or false", "true")
    raise _KeyError(
        table.key(name),
        f"must be {allowed}, got {value!r} ({_type_name(value)})",
        f"write {name} = {example}",
    )


def _int_or_auto(table: _Table, name: str) -> int | str:
    if table.raw(name, "auto") == "auto":
        return "auto"
    return table.int(name, low=1)


def _read_pruner(table: _Table | None) -> PrunerSection:
    if table is None:
        return PrunerSection()
    kind = table.data.get("kind", "none")
    if not isinstance(kind, str) or kind not in PRUNER_OPTIONS:
        raise _KeyError(
            table.key("kind"),
            f"unknown value {kind!r}",
            f"choose one of {', '.join(PRUNER_OPTIONS)}",
        )
    allowed = PRUNER_OPTIONS[kind]
    checked = _Table(table.data, table.where, ("kind", *allowed))
    options = []
    for name, types in allowed.items():
        if not checked.has(name):
            continue
        value = checked.raw(name)
        if isinstance(value, str) and str in types:
            if value != "auto":
                raise _KeyError(
                    checked.key(name),
                    f"unknown value {value!r}",
                    f'write {name} = "auto" or an integer',
                )
        elif not _is_int(value) or value < 0:
            raise _KeyError(
                checked.key(name), f"must be an integer >= 0, got {value!r}", f"write {name} = 1"
            )
        options.append((name, value))
    return PrunerSection(kind=kind, options=tuple(sorted(options)))


def _read_objective(table: _Table | None) -> ObjectiveSection:
    if table is None:
        return ObjectiveSection()
    kind = table.choice("kind", OBJECTIVE_KINDS, "train")
    sub = table.table("surrogate", ("A", "c", "p", "noise"))
    if kind == "surrogate" and sub is None:
        raise _KeyError(
            table.key("surrogate"),
            "missing",
            "add [objective.surrogate] with A, c and p (see studies/surrogate_compound.toml)",
        )
    if kind == "train" and sub is not None:
        raise _KeyError(
            table.key("surrogate"),
            'given with kind = "train"',
            'set kind = "surrogate" or drop [objective.surrogate]',
        )
    constants = None
    if sub is not None:
        per_axis = []
        for name in ("c", "p"):
            axes = _Table(sub.raw(name), sub.key(name), ("depth", "width", "resolution"))
            values = []
            for axis in ("depth", "width", "resolution"):
                value = axes.number(axis)
                if value <= 0:
                    raise _KeyError(
                        axes.key(axis),
                        f"must be > 0, got {value:g}",
                        "every gain and exponent is positive",
                    )
                values.append(value)
            per_axis.append(tuple(values))
        noise = sub.number("noise", 0.0)
        if not 0 <= noise <= 1:
            raise _KeyError(
                sub.key("noise"),
                f"must be in [0, 1] (AP is a fraction), got {noise:g}",
                "noise is a standard deviation of AP, e.g. noise = 0.002",
            )
        ceiling = sub.number("A")
        if not 0 < ceiling <= 1:
            raise _KeyError(
                sub.key("A"),
                f"must be in (0, 1] (the AP ceiling, a fraction), got {ceiling:g}",
                "write A = 0.55",
            )
        constants = SurrogateConstants(A=ceiling, c=per_axis[0], p=per_axis[1], noise=noise)
    return ObjectiveSection(kind=kind, surrogate=constants)


def _read_trials_per_gpu(table: _Table) -> int | str:
    value = table.raw("trials_per_gpu", "auto")
    if value == "auto" or (_is_int(value) and value >= 1):
        return value
    if isinstance(value, str):
        problem = f"unknown value {value!r}"
    elif _is_int(value):
        problem = f"must be >= 1, got {value}"
    else:
        problem = f'must be "auto" or an integer >= 1, got {value!r} ({_type_name(value)})'
    raise _KeyError(
        table.key("trials_per_gpu"),
        problem,
        'write trials_per_gpu = "auto" (chosen from the GPU memory and CPU cores) '
        "or an integer such as trials_per_gpu = 4",
    )


def _read_execution(table: _Table | None, folder: Path) -> ExecutionSection:
    if table is None:
        return ExecutionSection()
    gpus = table.raw("gpus", [])
    if (
        not isinstance(gpus, list)
        or not all(_is_int(g) and g >= 0 for g in gpus)
        or len(set(gpus)) != len(gpus)
    ):
        raise _KeyError(
            table.key("gpus"),
            f"must be a list of distinct device indices, got {gpus!r}",
            "write gpus = [0, 1]",
        )
    address = table.raw("address", None)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise _KeyError(
            table.key("address"),
            f"must be a non-empty string, got {address!r}",
            'write address = "auto" or address = "host:6379"',
        )
    cpus = table.number("cpus_per_trial", 1.0)
    if cpus <= 0:
        raise _KeyError(
            table.key("cpus_per_trial"), f"must be > 0, got {cpus:g}", "e.g. cpus_per_trial = 1"
        )
    gpus_per_trial = table.number("gpus_per_trial", None)
    if gpus_per_trial is not None and (
        gpus_per_trial < 0 or (gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial))
    ):
        raise _KeyError(
            table.key("gpus_per_trial"),
            f"must be a fraction in [0, 1] or a whole number, got {gpus_per_trial:g}",
            "e.g. gpus_per_trial = 0.25",
        )
    storage_path = table.raw("storage_path", None)
    if storage_path is not None:
        if not isinstance(storage_path, str) or not storage_path.strip():
            raise _KeyError(
                table.key("storage_path"),
                f"must be a folder path, got {storage_path!r}",
                'write storage_path = "ray-results" (relative to the study file)',
            )
        storage_path = (folder / storage_path).resolve()
    return ExecutionSection(
        backend=table.choice("backend", BACKENDS, "optuna"),
        workers=table.int("workers", 1, low=1, high=_MAX_WORKERS),
        gpus=tuple(gpus),
        trials_per_gpu=_read_trials_per_gpu(table),
        address=address,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus_per_trial,
        max_concurrent=table.int("max_concurrent", None, low=1),
        max_failures=table.int("max_failures", 1, low=0),
        storage_path=storage_path,
    )


# --------------------------------------------------------------------------------------------
# cross-section rules


_EXECUTION_KEYS = (
    "backend",
    "workers",
    "gpus",
    "trials_per_gpu",
    "address",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "max_failures",
    "storage_path",
)
_SECTIONS = (
    "study",
    "base",
    "space",
    "constraint",
    "data",
    "train",
    "pruner",
    "objective",
    "execution",
)


def parse_study_text(text: str, *, path: str | Path) -> StudyDefinition:
    """Parse and validate study-file ``text`` as if read from ``path`` (for relative paths).

    Raises :class:`StudyFileError` with a one-line message naming the file, the key and the fix.
    """
    path = Path(path).resolve()
    try:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _KeyError(
                "toml",
                f"not valid TOML ({' '.join(str(exc).split())})",
                "fix the syntax at that line",
            ) from None
        except RecursionError:
            raise _KeyError(
                "toml",
                "nested too deeply to read (thousands of nested arrays or tables)",
                "write the values flat",
            ) from None
        root = _Table(raw, "", _SECTIONS)
        for name in ("study", "base", "space"):
            if not root.has(name):
                raise _KeyError(
                    name, "missing section", f"add a [{name}] table (see studies/quickstart.toml)"
                )
        constraint = _read_constraint(
            _Table(raw.get("constraint", {}), "constraint", ("target", "tolerance", "kind", "mode"))
        )
        objective = _read_objective(root.table("objective", ("kind", "surrogate")))
        base = _read_base(
            _Table(
                raw["base"],
                "base",
                (
                    "preset",
                    "backbone_width",
                    "backbone_depth",
                    "bifpn",
                    "resolution_base",
                    "phi_proxy",
                    "resolution",
                    "num_classes",
                    "fusion",
                    "pretrained",
                ),
            ),
            path.parent,
        )
        data_table = root.table("data", ("dir", "generate", "train", "val", "subset"))
        definition = StudyDefinition(
            path=path,
            text=text,
            study=_read_study(
                _Table(
                    raw["study"],
                    "study",
                    ("name", "storage", "sampler", "seed", "seeds", "n_trials", "objectives"),
                ),
                path.stem,
            ),
            base=base,
            space=_read_space(
                _Table(
                    raw["space"],
                    "space",
                    ("alpha", "beta", "gamma", "width_growth", "depth_step", "fusion"),
                ),
                constraint.mode,
                base.fusion,
            ),
            constraint=constraint,
            data=None if data_table is None else _read_data(data_table, path.parent),
            train=_read_train(
                _Table(
                    raw.get("train", {}),
                    "train",
                    (
                        "epochs",
                        "steps",
                        "seconds",
                        "batch_size",
                        "lr",
                        "optimizer",
                        "device",
                        "num_workers",
                        *SPEED_KEYS,
                    ),
                ),
                required=objective.kind == "train",
            ),
            pruner=_read_pruner(
                root.table(
                    "pruner", ("kind", *{k for options in PRUNER_OPTIONS.values() for k in options})
                )
            ),
            objective=objective,
            execution=_read_execution(root.table("execution", _EXECUTION_KEYS), path.parent),
        )
        check_definition(definition)
        check_buildable(definition)
        _check_pretrained(definition)
    except ParameterError as exc:
        raise StudyFileError(f"{path.name}: {exc}") from None
    return definition


def load_study_file(path: str | Path) -> StudyDefinition:
    """Read and validate the study file at ``path`` (see the module docstring for the keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    return parse_study_text(path.read_text(), path=path)
