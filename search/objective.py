"""One trial: sample a point, build the φ=0 and φ=1 detectors, gate on cost, then score.

The proxy (φ=0) is the study's base scaled to ``phi_proxy`` and is the same in every trial; the
φ=1 model grows from it by the trial's multipliers (``alpha`` depth, ``beta`` width, ``gamma``
resolution, ``width_growth`` BiFPN channels, ``depth_step`` BiFPN cells). This is EfficientNet's
step 1: fix φ=1, search the coefficients.

The cost ratio reaches the sampler through Optuna 5.0's ``Trial.set_constraint("cost_ratio",
violation)`` (stored as the trial system attr ``"constraints:cost_ratio"``; <= 0 feasible); the
5.0 samplers read it with no ``constraints_func``. A point outside the band is never trained: the
trial ends PRUNED within milliseconds, with ``infeasible_reason`` in its user attrs. TPE learns
from such PRUNED trials; GP and NSGA-II learn only from COMPLETE ones, which is why the study
file refuses band mode with them.
Feasible points are scored by the analytic surrogate or by ``detector.train.train_proxy``, which
reports AP after each epoch so that the pruner can stop the trial.

User attrs of every trial: ``cost_ratio``, ``feasible``, the φ=1 model's effective dimensions
(``width_multiplier``, ``depth_multiplier``, ``resolution``, ``bifpn_channels``,
``bifpn_repeats``, ``head_repeats``), its ``macs`` (multiply-adds per image), ``params`` and
``activations`` when ``detector.complexity`` is available, ``gamma`` when derived, and every
coordinate that is fixed rather than sampled. Trained trials add ``ap``, ``ap50``, ``ap75``,
``aps``, ``apm``, ``apl`` (``None`` where COCOeval has no objects of that size),
``images_per_s``, ``train_seconds``, ``levers`` (the speed levers in effect, see
:class:`detector.train.TrainResult`) and ``last_epoch`` (``pruned_at_epoch`` when the pruner
stopped them); a worker on a GPU slot records ``gpu``; a grid point already held by another
trial is pruned with ``skip_reason`` and ``duplicate_of``.

What can go wrong, and how each trial ends (``docs/reliability.md``):

* an exception: FAIL with ``error`` (one line) and ``fail_reason`` ``"error"``;
* a non-finite AP (NaN or ±inf, from training or the surrogate): FAIL, ``fail_reason``
  ``"non_finite"``. It is never returned: Optuna would record ``+inf`` as COMPLETE and, when
  maximizing, as the best value;
* GPU out of memory (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying "out of
  memory"): the memory is released (``gc.collect()``, ``torch.cuda.empty_cache()``) and the
  training retried once at half the batch (``oom_retry_batch_size``); a second OOM, or a batch
  that cannot be halved, ends FAIL with ``fail_reason`` ``"oom"`` and the study goes on;
* a NaN or infinite loss (``detector.train.DivergedError``): PRUNED with ``prune_reason``
  ``"diverged"``, ``diverged_step`` and ``error``; never COMPLETE with AP 0;
* a worker killed mid-trial: see :mod:`search.storage` (``fail_reason`` ``"worker_lost"``, then
  one retry with ``retry_of``).

PRUNED trials carry ``prune_reason``: ``"infeasible"``, ``"duplicate"``, ``"pruner"`` or
``"diverged"``.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from detector.config import DetectorConfig, from_scaling
from detector.scaling import (
    PAPER_COEFFICIENTS,
    BifpnRule,
    CompoundCoefficients,
    ResolutionRule,
    ScaledDimensions,
    ScalingSpec,
    scale,
)
from search.space import (
    PARAM_NAMES,
    CandidatePoint,
    Choices,
    CostConstraint,
    Fixed,
    Param,
    Range,
    SampledPoint,
    SearchSpace,
    suggest,
)
from search.study_file import BaseSection, DataSection, StudyDefinition
from search.surrogate import surrogate_accuracy

__all__ = [
    "CONSTRAINT_NAME",
    "METRIC_NAMES",
    "NonFiniteObjectiveError",
    "TrialOutOfMemoryError",
    "Objective",
    "is_out_of_memory",
    "release_memory",
    "proxy_dimensions",
    "family_spec",
    "build_configs",
    "corner_points",
    "effective_multipliers",
    "trial_coordinates",
    "train_inputs",
]

#: the key of the constraint given to ``Trial.set_constraint``
CONSTRAINT_NAME = "cost_ratio"
#: COCO metrics recorded from training (fractions in [0, 1])
METRIC_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")


class NonFiniteObjectiveError(ValueError):
    """The objective value came out NaN or infinite; the trial is failed, never COMPLETE."""


class TrialOutOfMemoryError(RuntimeError):
    """Training ran out of memory (after the retry at half the batch); the trial is failed with
    ``fail_reason = "oom"``. It holds only the message: no frame, so no tensor, stays alive."""


#: substrings of a RuntimeError's message that mean an allocation failed
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.cuda.OutOfMemoryError`` (alias
    ``torch.OutOfMemoryError``), or a ``RuntimeError`` whose message says so (CUDA, MPS, the
    CPU allocator)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MESSAGES))


def release_memory() -> None:
    """Free what a failed training left behind: collect garbage (the frames of the caught
    exception hold the model, the optimizer and the batch), then return the CUDA cache to the
    driver when CUDA is available."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, NonFiniteObjectiveError):
        return "non_finite"
    if isinstance(exc, TrialOutOfMemoryError) or is_out_of_memory(exc):
        return "oom"
    return "error"


def proxy_dimensions(base: BaseSection) -> ScaledDimensions:
    """The proxy's (search φ=0) dimensions: the base at ``phi_proxy`` under the paper's rules
    (coefficients 1.2/1.1/1.15 for backbone and resolution, BiFPN ×1.35 width and +1 cell per φ),
    with ``base.resolution`` (pixels) replacing the resolution when given."""
    spec = ScalingSpec(
        coefficients=PAPER_COEFFICIENTS,
        bifpn=base.bifpn,
        resolution=ResolutionRule(kind="compound", base=float(base.resolution_base), step=0.0),
        backbone_width=base.backbone_width,
        backbone_depth=base.backbone_depth,
    )
    dims = scale(spec, base.phi_proxy)
    if base.resolution is not None:
        dims = replace(dims, resolution=base.resolution)
    return dims


def family_spec(base: BaseSection, point: CandidatePoint) -> ScalingSpec:
    """The scaling spec whose φ=0 is the proxy and whose φ=1 applies ``point``'s multipliers."""
    d0 = proxy_dimensions(base)
    return ScalingSpec(
        coefficients=CompoundCoefficients(alpha=point.alpha, beta=point.beta, gamma=point.gamma),
        bifpn=BifpnRule(
            width_base=float(d0.bifpn_channels), width_growth=point.width_growth,
            depth_base=float(d0.bifpn_repeats), depth_step=point.depth_step,
            head_depth_base=d0.head_repeats, head_depth_period=base.bifpn.head_depth_period,
        ),
        resolution=ResolutionRule(kind="compound", base=float(d0.resolution), step=0.0),
        backbone_width=d0.width_multiplier,
        backbone_depth=d0.depth_multiplier,
    )


def build_configs(
    base: BaseSection, point: CandidatePoint, *, num_classes: int
) -> tuple[DetectorConfig, DetectorConfig]:
    """The φ=0 (proxy) and φ=1 detector configs for ``point``."""
    spec = family_spec(base, point)
    return tuple(  # type: ignore[return-value]
        from_scaling(spec, phi, num_classes=num_classes, fusion=point.fusion,
                     name=f"proxy-phi{phi}")
        for phi in (0, 1)
    )


def _extremes(param: Param) -> tuple[Any, Any]:
    if isinstance(param, Fixed):
        return param.value, param.value
    if isinstance(param, Choices):
        if all(isinstance(v, str) for v in param.values):
            return param.values[0], param.values[0]
        return min(param.values), max(param.values)
    return param.low, param.high


def corner_points(space: SearchSpace, constraint: CostConstraint) -> tuple[CandidatePoint, ...]:
    """The smallest and the largest point of ``space`` (every multiplier at its low or high end),
    used to check once that all models of the study can be built."""
    ends = {name: _extremes(space.param(name)) for name in PARAM_NAMES}
    return tuple(CandidatePoint(**{name: ends[name][i] for name in PARAM_NAMES}) for i in (0, 1))


def effective_multipliers(phi0: DetectorConfig, phi1: DetectorConfig) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers of ``phi1`` over ``phi0`` after rounding."""
    return (
        phi1.backbone.depth_multiplier / phi0.backbone.depth_multiplier,
        phi1.backbone.width_multiplier / phi0.backbone.width_multiplier,
        phi1.image_size[0] / phi0.image_size[0],
    )


def trial_coordinates(trial: Any) -> dict[str, Any]:
    """A finished trial's ``alpha``, ``beta``, ``gamma``, ``width_growth``, ``depth_step`` and
    ``fusion``, whether sampled (params), derived or fixed (user attrs); ``None`` if unknown."""
    return {name: trial.params.get(name, trial.user_attrs.get(name)) for name in PARAM_NAMES}


def train_inputs(definition: StudyDefinition, data: DataSection) -> tuple[Any, Any]:
    """``detector.train``'s ``DataSettings`` and ``TrainSettings`` for this study; ``data``
    must be resolved (its ``dir`` set, see :func:`search.runners.optuna_runner.prepare_data`).
    Every trial trains with the study seed (0 when unset), so that trials differ only in the
    architecture."""
    from detector.train import DataSettings, TrainSettings

    t = definition.train
    if data.dir is None:
        raise ValueError("data: not prepared; generate the data before training")
    budget = {name: getattr(t, name) for name in ("epochs", "steps", "seconds")
              if getattr(t, name) is not None}
    return (
        DataSettings(dir=data.dir, train_subset=data.subset_train, val_subset=data.subset_val,
                     num_workers=t.num_workers, cache=t.cache),
        TrainSettings(**budget, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr,
                      seed=definition.study.seed or 0, **t.speed_settings(),
                      # per-epoch AP feeds the pruner; without one, evaluate once at the end
                      eval_every_epoch=definition.pruner.kind != "none"),
    )


def _complexity_function(required: bool) -> Callable[[DetectorConfig], Any] | None:
    try:
        from detector.complexity import count_complexity
    except ModuleNotFoundError as exc:
        if exc.name != "detector.complexity" or required:
            raise
        return None
    return count_complexity


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class Objective:
    """The Optuna objective of a study: ``Objective(definition, ...)(trial)``.

    ``num_classes`` sizes the detectors; ``data`` is the resolved data section (its ``dir``
    set) and ``device`` the torch device, both for ``objective.kind = "train"``; ``gpu`` (the
    worker's GPU slot) is recorded in each trial's user attrs; ``trainer`` replaces
    ``detector.train.train_proxy`` (for fault injection in tests).
    Returns AP, or (AP, MACs of the φ=1 model) for two objectives.
    """

    def __init__(
        self,
        definition: StudyDefinition,
        *,
        num_classes: int,
        data: DataSection | None = None,
        device: str = "cpu",
        gpu: int | None = None,
        trainer: Callable[..., Any] | None = None,
        quiet: bool = True,
    ) -> None:
        self.definition = definition
        self.num_classes = num_classes
        self.device = device
        self.gpu = gpu
        self.trainer = trainer
        self.quiet = quiet
        self._train_inputs = None
        if definition.objective.kind == "train":
            if data is None:
                raise ValueError("data: objective.kind = \"train\" needs the prepared data")
            self._train_inputs = train_inputs(definition, data)
        needs_cost = (definition.constraint.kind == "measured"
                      or "macs" in definition.study.objectives
                      or definition.objective.kind == "train")
        self._complexity = _complexity_function(required=needs_cost)
        self._cost_cache: dict[DetectorConfig, Any] = {}

    # -- cost -------------------------------------------------------------------------------

    def _cost(self, config: DetectorConfig) -> Any:
        if config not in self._cost_cache:
            assert self._complexity is not None
            self._cost_cache[config] = self._complexity(config)
        return self._cost_cache[config]

    def measured_ratio(self, point: CandidatePoint) -> float:
        """MACs per image of the φ=1 model over the proxy's (dimensionless)."""
        phi0, phi1 = build_configs(self.definition.base, point, num_classes=self.num_classes)
        return self._cost(phi1).macs / self._cost(phi0).macs

    # -- the trial --------------------------------------------------------------------------

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", _one_line(exc))
            trial.set_user_attr("fail_reason", _fail_reason(exc))
            raise

    def _evaluate(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        d = self.definition
        point = suggest(trial, d.space, d.constraint,
                        measured_ratio=self.measured_ratio
                        if d.constraint.kind == "measured" else None)
        phi0, phi1 = build_configs(d.base, point.candidate(), num_classes=self.num_classes)
        attrs = self._point_attrs(point, phi1)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint(CONSTRAINT_NAME, point.violation)

        if not point.feasible:
            reason = self._infeasible_reason(point)
            trial.set_user_attr("infeasible_reason", reason)
            trial.set_user_attr("prune_reason", "infeasible")
            raise optuna.TrialPruned(reason)
        if d.study.sampler == "grid":
            duplicate = _duplicate_grid_point(trial)
            if duplicate is not None:
                trial.set_user_attr("skip_reason", duplicate)
                trial.set_user_attr("prune_reason", "duplicate")
                raise optuna.TrialPruned(duplicate)

        if d.objective.kind == "surrogate":
            ap = self._surrogate(trial, point, phi0, phi1)
        else:
            ap = self._train(trial, phi1)
        if not math.isfinite(ap):
            raise NonFiniteObjectiveError(f"AP is {ap}; the trial is failed, not recorded")
        if len(d.study.objectives) == 1:
            return ap
        return ap, float(attrs["macs"])

    def _point_attrs(self, point: SampledPoint, phi1: DetectorConfig) -> dict[str, Any]:
        d = self.definition
        attrs: dict[str, Any] = {
            "cost_ratio": point.ratio,
            "feasible": point.feasible,
            "width_multiplier": phi1.backbone.width_multiplier,
            "depth_multiplier": phi1.backbone.depth_multiplier,
            "resolution": phi1.image_size[0],
            "bifpn_channels": phi1.fpn.channels,
            "bifpn_repeats": phi1.fpn.repeats,
            "head_repeats": phi1.head.repeats,
        }
        if point.gamma_derived:
            attrs["gamma"] = point.gamma
        if self.gpu is not None:
            attrs["gpu"] = self.gpu
        for name in PARAM_NAMES:
            param = d.space.param(name)
            if isinstance(param, Fixed) and not (name == "gamma" and point.gamma_derived):
                attrs[name] = param.value
        if self._complexity is not None:
            cost = self._cost(phi1)
            attrs.update(macs=int(cost.macs), params=int(cost.params),
                         activations=int(cost.activations))
        return attrs

    def _infeasible_reason(self, point: SampledPoint) -> str:
        c = self.definition.constraint
        low, high = c.band()
        gamma = self.definition.space.gamma
        at_bound = (point.gamma_derived and isinstance(gamma, Range)
                    and point.gamma in (gamma.low, gamma.high))
        return (f"{'derived gamma at its bound; ' if at_bound else ''}{c.kind} cost ratio "
                f"{point.ratio:.4f} outside [{low:.4f}, {high:.4f}] "
                f"(target {c.target:g} ± {c.tolerance:g})")

    def _surrogate(self, trial: Any, point: SampledPoint, phi0: DetectorConfig,
                   phi1: DetectorConfig) -> float:
        d = self.definition
        assert d.objective.surrogate is not None
        if d.constraint.kind == "measured":
            depth, width, resolution = effective_multipliers(phi0, phi1)
        else:
            depth, width, resolution = point.alpha, point.beta, point.gamma
        ap = float(surrogate_accuracy(d.objective.surrogate, depth=depth, width=width,
                                      resolution=resolution,
                                      noise_seed=(d.study.seed or 0, trial.number)))
        if not math.isfinite(ap):
            raise NonFiniteObjectiveError(f"AP is {ap}; the trial is failed, not recorded")
        trial.set_user_attr("ap", ap)
        return ap

    def _train(self, trial: Any, phi1: DetectorConfig) -> float:
        import optuna
        from detector.train import DivergedError

        trainer = self.trainer
        if trainer is None:
            from detector.train import train_proxy as trainer
        single = len(self.definition.study.objectives) == 1

        def on_epoch(epoch: int, metrics: dict) -> None:
            ap = float(metrics["ap"])
            trial.set_user_attr("last_epoch", epoch)
            if not math.isfinite(ap):
                raise NonFiniteObjectiveError(f"AP is {ap} after epoch {epoch}")
            if single:  # Optuna cannot report or prune multi-objective trials
                if epoch not in trial_reported:  # a retry at half the batch reports again
                    trial_reported.add(epoch)
                    trial.report(ap, epoch)
                if trial.should_prune():
                    trial.set_user_attr("pruned_at_epoch", epoch)
                    trial.set_user_attr("prune_reason", "pruner")
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} at AP {ap:.4f}")

        trial_reported: set[int] = set()
        data, settings = self._train_inputs
        oom: str | None = None
        diverged: tuple[int, str] | None = None
        result = None
        for attempt in range(2):
            try:
                result = trainer(phi1, data=data, settings=settings, device=self.device,
                                 on_epoch=on_epoch, quiet=self.quiet)
            except DivergedError as exc:
                diverged = (int(exc.step), _one_line(exc))
            except Exception as exc:  # noqa: BLE001 - only allocation failures are handled here
                if not is_out_of_memory(exc):
                    raise
                oom = _one_line(exc)
            # outside the handler: the exception and its frames (model, batch) are gone now
            if diverged is not None:
                release_memory()
                step, message = diverged
                trial.set_user_attr("diverged_step", step)
                trial.set_user_attr("prune_reason", "diverged")
                trial.set_user_attr("error", message)
                raise optuna.TrialPruned(f"diverged at step {step}")
            if result is not None:
                break
            release_memory()
            half = settings.batch_size // 2
            if attempt == 1 or half < 2:
                why = "after the retry at half the batch" if attempt else \
                    f"and batch {settings.batch_size} cannot be halved (BatchNorm needs 2)"
                raise TrialOutOfMemoryError(f"out of memory {why}: {oom}")
            trial.set_user_attr("oom_retry_batch_size", half)
            trial.set_user_attr("oom_error", oom)
            settings = replace(settings, batch_size=half)
        assert result is not None
        for name in METRIC_NAMES:  # an undefined size breakdown (NaN) is stored as None
            value = float(result.metrics.get(name, math.nan))
            trial.set_user_attr(name, value if math.isfinite(value) else None)
        trial.set_user_attr("images_per_s", float(result.images_per_s))
        trial.set_user_attr("train_seconds", float(result.seconds))
        trial.set_user_attr("levers", dict(result.levers))
        return float(result.metrics["ap"])


def _duplicate_grid_point(trial: Any) -> str | None:
    """The reason to skip a grid point that another trial has finished or is running (a race
    between workers after the first pass over the grid), else ``None``."""
    from optuna.trial import TrialState

    for other in trial.study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ):
        if other.number == trial.number or other.params != trial.params:
            continue
        if other.state == TrialState.RUNNING and other.number > trial.number:
            continue
        if other.user_attrs.get("duplicate_of") is not None:
            continue
        trial.set_user_attr("duplicate_of", other.number)
        return f"grid point already taken by trial {other.number}"
    return None
