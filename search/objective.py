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
Feasible points are scored by the analytic surrogate or by
``effscale.detector.train.train_proxy``, which
reports AP after each epoch so that the pruner can stop the trial.

User attrs of every trial: ``cost_ratio``, ``feasible``, the φ=1 model's effective dimensions
(``width_multiplier``, ``depth_multiplier``, ``resolution``, ``bifpn_channels``,
``bifpn_repeats``, ``head_repeats``), its ``macs`` (multiply-adds per image), ``params`` and
``activations``, ``gamma`` when derived, and every
coordinate that is fixed rather than sampled. Trained trials add ``ap``, ``ap50``, ``ap75``,
``aps``, ``apm``, ``apl`` (``None`` where COCOeval has no objects of that size),
``images_per_s``, ``train_seconds``, ``levers`` (the speed levers in effect, see
:class:`effscale.detector.train.TrainResult`) and ``last_epoch`` (``pruned_at_epoch`` when the pruner
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
* a worker killed mid-trial: see :mod:`.storage.liveness` (``fail_reason`` ``"worker_lost"``, then
  one retry with ``retry_of``).

PRUNED trials carry ``prune_reason``: ``"infeasible"``, ``"duplicate"``, ``"pruner"`` or
``"diverged"``.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from effscale.detector.complexity import Complexity
from effscale.detector.config import DetectorConfig
from effscale.detector.train import (
    DataSettings,
    DivergedError,
    TrainResult,
    TrainSettings,
    train_proxy,
)

from .definition import DataSection, StudyDefinition
from .errors import ParameterError
from .family import CostMeter, build_configs, effective_multipliers
from .space import PARAM_NAMES, CandidatePoint, Fixed, Range, SampledPoint, suggest
from .surrogate import surrogate_accuracy
from .trials import CONSTRAINT_NAME, mean_interval

__all__ = [
    "CONSTRAINT_NAME",
    "METRIC_NAMES",
    "NonFiniteObjectiveError",
    "TrialOutOfMemoryError",
    "Objective",
    "is_out_of_memory",
    "release_memory",
    "train_inputs",
    "seed_summary",
]

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
    ``torch.OutOfMemoryError``), a ``MemoryError``, or a ``RuntimeError`` whose message says so
    (CUDA, MPS, the CPU allocator)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def release_memory() -> None:
    """Free what a failed training left behind: collect garbage (the frames of the caught
    exception hold the model, the optimizer and the batch), then return the CUDA cache to the
    driver when CUDA is available."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, NonFiniteObjectiveError):
        return "non_finite"
    if isinstance(exc, TrialOutOfMemoryError) or is_out_of_memory(exc):
        return "oom"
    return "error"


def train_inputs(
    definition: StudyDefinition, data: DataSection
) -> tuple[DataSettings, TrainSettings]:
    """``effscale.detector.train``'s ``DataSettings`` and ``TrainSettings`` for this study;
    ``data`` must be prepared (its ``dir`` set, see :func:`.data.prepare_data`). Every trial
    trains with the study seed (0 when unset), so that trials differ only in the architecture."""
    t = definition.train
    if data.dir is None and (data.train is None or data.val is None):
        raise ParameterError("data", "not prepared", "generate the data before training")
    return (
        DataSettings(
            dir=data.dir,
            train=data.train,
            val=data.val,
            train_subset=data.subset_train,
            val_subset=data.subset_val,
            num_workers=t.num_workers,
            cache=t.cache,
        ),
        TrainSettings(
            **t.budget(),
            batch_size=t.batch_size,
            optimizer=t.optimizer,
            lr=t.lr,
            seed=definition.study.seed or 0,
            **t.speed_settings(),
            # per-epoch AP feeds the pruner; without one, evaluate once at the end
            eval_every_epoch=definition.pruner.kind != "none",
            pretrained=None if (w := definition.base.pretrained) is None else str(w),
        ),
    )


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


#: what trains a φ=1 model: :func:`effscale.detector.train.train_proxy` or a stand-in
Trainer = Callable[..., TrainResult]


class Objective:
    """The Optuna objective of a study: ``Objective(definition, ...)(trial)``.

    ``num_classes`` sizes the detectors; ``data`` is the prepared data section (its ``dir``
    set) and ``device`` the torch device, both for ``objective.kind = "train"``; ``gpu`` (the
    worker's GPU slot) is recorded in each trial's user attrs; ``trainer`` replaces
    :func:`~effscale.detector.train.train_proxy` (fault injection in tests). Subclasses may
    wrap :meth:`__call__` to inject faults; the runners take the class as ``objective=``.
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
        trainer: Trainer | None = None,
        quiet: bool = True,
    ) -> None:
        self.definition = definition
        self.num_classes = num_classes
        self.device = device
        self.gpu = gpu
        self.trainer: Trainer = trainer if trainer is not None else train_proxy
        self.quiet = quiet
        self._train_inputs: tuple[DataSettings, TrainSettings] | None = None
        if definition.objective.kind == "train":
            if data is None:
                raise ParameterError(
                    "data", 'objective.kind = "train" needs the prepared data', "pass data="
                )
            self._train_inputs = train_inputs(definition, data)
        self._meter = CostMeter(definition.base, num_classes=num_classes)
        self._untrained_ap: float | None = None

    # -- cost -------------------------------------------------------------------------------

    def _cost(self, config: DetectorConfig) -> Complexity:
        return self._meter.complexity(config)

    def measured_ratio(self, point: CandidatePoint) -> float:
        """MACs per image of the φ=1 model over the proxy's (dimensionless)."""
        return self._meter.ratio(point)

    def score_point(
        self, point: CandidatePoint, seeds: Sequence[int], *, trial_number: int
    ) -> list[float]:
        """AP (a fraction in [0, 1]) of ``point``'s φ=1 model for each of ``seeds``, outside any
        Optuna trial (``effscale confirm``): trained with the study's budget per seed, or the
        surrogate with the noise of ``(study seed, trial_number, seed)``. A diverged or
        out-of-memory training raises."""
        d = self.definition
        phi0, phi1 = build_configs(d.base, point, num_classes=self.num_classes)
        aps = []
        for seed in seeds:
            if d.objective.kind == "surrogate":
                assert d.objective.surrogate is not None
                if d.constraint.kind == "measured":
                    depth, width, resolution = effective_multipliers(phi0, phi1)
                else:
                    depth, width, resolution = point.alpha, point.beta, point.gamma
                ap = surrogate_accuracy(
                    d.objective.surrogate,
                    depth=depth,
                    width=width,
                    resolution=resolution,
                    noise_seed=(d.study.seed or 0, trial_number, seed),
                )
            else:
                assert self._train_inputs is not None
                data, settings = self._train_inputs
                result = self.trainer(
                    phi1,
                    data=data,
                    settings=replace(settings, seed=seed, eval_every_epoch=False),
                    device=self.device,
                    quiet=self.quiet,
                )
                ap = float(result.metrics["ap"])
            if not math.isfinite(ap):
                raise NonFiniteObjectiveError(f"AP is {ap} for seed {seed}")
            aps.append(float(ap))
        return aps

    # -- the trial --------------------------------------------------------------------------

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", _one_line(exc))
            trial.set_user_attr("fail_reason", _fail_reason(exc))
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | tuple[float, float]:
        d = self.definition
        point = suggest(
            trial,
            d.space,
            d.constraint,
            measured_ratio=self.measured_ratio if d.constraint.kind == "measured" else None,
        )
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
        cost = self._cost(phi1)
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
        attrs.update(
            macs=int(cost.macs), params=int(cost.params), activations=int(cost.activations)
        )
        return attrs

    def _infeasible_reason(self, point: SampledPoint) -> str:
        c = self.definition.constraint
        low, high = c.band()
        gamma = self.definition.space.gamma
        at_bound = (
            point.gamma_derived
            and isinstance(gamma, Range)
            and point.gamma in (gamma.low, gamma.high)
        )
        return (
            f"{'derived gamma at its bound; ' if at_bound else ''}{c.kind} cost ratio "
            f"{point.ratio:.4f} outside [{low:.4f}, {high:.4f}] "
            f"(target {c.target:g} ± {c.tolerance:g})"
        )

    def _surrogate(
        self, trial: optuna.Trial, point: SampledPoint, phi0: DetectorConfig, phi1: DetectorConfig
    ) -> float:
        d = self.definition
        assert d.objective.surrogate is not None
        if d.constraint.kind == "measured":
            depth, width, resolution = effective_multipliers(phi0, phi1)
        else:
            depth, width, resolution = point.alpha, point.beta, point.gamma
        aps = []
        for seed in d.study.seeds:
            ap = float(
                surrogate_accuracy(
                    d.objective.surrogate,
                    depth=depth,
                    width=width,
                    resolution=resolution,
                    noise_seed=(d.study.seed or 0, trial.number, seed),
                )
            )
            if not math.isfinite(ap):
                raise NonFiniteObjectiveError(f"AP is {ap}; the trial is failed, not recorded")
            aps.append(ap)
        summary = seed_summary(d.study.seeds, aps)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("ap", summary["ap_mean"])
        return float(summary["ap_mean"])

    def _train(self, trial: optuna.Trial, phi1: DetectorConfig) -> float:
        assert self._train_inputs is not None
        d = self.definition
        data, settings = self._train_inputs
        seeds = d.study.seeds
        # per epoch, the APs of the seeds trained so far: the pruner sees their running mean at
        # step "epochs trained over all seeds so far", the same step in every trial
        by_epoch: dict[int, list[float]] = {}
        offset = 0
        results: list[TrainResult] = []
        for index, seed in enumerate(seeds):
            # the first training of this objective also scores the untrained model, once
            floor = self._untrained_ap is None and index == 0
            seed_settings = replace(settings, seed=seed, eval_untrained=floor)
            result = self._train_seed(trial, phi1, seed_settings, by_epoch=by_epoch, offset=offset)
            if floor and result.untrained_metrics is not None:
                self._untrained_ap = float(result.untrained_metrics["ap"])
            results.append(result)
            offset += result.epochs
            trial.set_user_attr("seeds_done", index + 1)
        aps = [float(r.metrics["ap"]) for r in results]
        summary = seed_summary(seeds, aps)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        for name in METRIC_NAMES:  # the mean over seeds; an undefined breakdown (NaN) is None
            values = [float(r.metrics.get(name, math.nan)) for r in results]
            mean = sum(values) / len(values)
            trial.set_user_attr(name, mean if math.isfinite(mean) else None)
        trial.set_user_attr("ap", summary["ap_mean"])
        trial.set_user_attr("steps_per_seed", [int(r.steps) for r in results])
        trial.set_user_attr(
            "images_per_s", sum(float(r.images_per_s) for r in results) / len(results)
        )
        trial.set_user_attr("train_seconds", sum(float(r.seconds) for r in results))
        trial.set_user_attr("levers", dict(results[0].levers))
        # an untrained detector scores about the same whatever its size: the first trained
        # architecture of this objective gives the floor that every trained point must clear
        if self._untrained_ap is not None:
            trial.set_user_attr("untrained_ap", self._untrained_ap)
        warnings = _training_warnings(settings, results, summary["ap_mean"], self._untrained_ap)
        if warnings:
            trial.set_user_attr("warnings", warnings)
        return float(summary["ap_mean"])

    def _train_seed(
        self,
        trial: optuna.Trial,
        phi1: DetectorConfig,
        settings: TrainSettings,
        *,
        by_epoch: dict[int, list[float]],
        offset: int,
    ) -> TrainResult:
        """Train ``phi1`` once with ``settings`` (one seed): per-epoch AP to the pruner, one retry
        at half the batch after running out of memory, a diverged loss ends the trial PRUNED."""
        assert self._train_inputs is not None
        data = self._train_inputs[0]
        single = len(self.definition.study.objectives) == 1
        reported: set[int] = set()

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            ap = float(metrics["ap"])
            trial.set_user_attr("last_epoch", epoch)
            if not math.isfinite(ap):
                raise NonFiniteObjectiveError(f"AP is {ap} after epoch {epoch}")
            if epoch in reported:  # a retry at half the batch reports its epochs again
                return
            reported.add(epoch)
            by_epoch.setdefault(epoch, []).append(ap)
            if single:  # Optuna cannot report or prune multi-objective trials
                seen = by_epoch[epoch]
                trial.report(sum(seen) / len(seen), offset + epoch)
                if trial.should_prune():
                    trial.set_user_attr("pruned_at_epoch", epoch)
                    trial.set_user_attr("prune_reason", "pruner")
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} at AP {ap:.4f}")

        oom: str | None = None
        diverged: tuple[int, str] | None = None
        result = None
        for attempt in range(2):
            try:
                result = self.trainer(
                    phi1,
                    data=data,
                    settings=settings,
                    device=self.device,
                    on_epoch=on_epoch,
                    quiet=self.quiet,
                )
            except DivergedError as exc:
                diverged = (int(exc.step), _one_line(exc))
            except Exception as exc:  # only allocation failures are handled here
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
                why = (
                    "after the retry at half the batch"
                    if attempt
                    else f"and batch {settings.batch_size} cannot be halved (BatchNorm needs 2)"
                )
                raise TrialOutOfMemoryError(f"out of memory {why}: {oom}")
            trial.set_user_attr("oom_retry_batch_size", half)
            trial.set_user_attr("oom_error", oom)
            settings = replace(settings, batch_size=half)
        assert result is not None
        return result


def seed_summary(seeds: Sequence[int], aps: Sequence[float]) -> dict[str, Any]:
    """The user attrs of a point trained once per seed: ``seeds``, ``ap_per_seed`` (in the
    order of ``seeds``), ``ap_mean``, ``ap_std`` (the sample standard deviation; ``None`` for one
    seed), ``ap_ci95`` (the 95% confidence interval of the mean, ``[low, high]``,
    :func:`.trials.mean_interval`; ``None`` for one seed) and ``n_seeds``. APs are fractions in
    [0, 1]."""
    values = [float(a) for a in aps]
    mean = sum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    interval = mean_interval(values, level=0.95)
    return {
        "seeds": list(seeds),
        "ap_per_seed": values,
        "ap_mean": mean,
        "ap_std": std,
        "ap_ci95": None if interval is None else list(interval),
        "n_seeds": len(values),
    }


def _training_warnings(
    settings: TrainSettings,
    results: Sequence[TrainResult],
    ap_mean: float,
    untrained: float | None,
) -> list[str]:
    """Why a trained point's AP may mean nothing: fewer optimizer steps (or epochs) than asked,
    or a mean AP not above an untrained model's."""
    warnings = []
    if settings.steps is not None:
        short = [r.steps for r in results if r.steps < settings.steps]
        if short:
            warnings.append(f"fewer steps than asked ({min(short)} of {settings.steps})")
    elif settings.epochs is not None:
        short_epochs = [r.epochs for r in results if r.epochs < settings.epochs]
        if short_epochs:
            warnings.append(f"fewer epochs than asked ({min(short_epochs)} of {settings.epochs:g})")
    if untrained is not None and ap_mean <= untrained:
        warnings.append(
            f"AP {ap_mean:.4f} is not above an untrained model's {untrained:.4f}: raise [train] "
            "steps or use easier data"
        )
    return warnings


def _duplicate_grid_point(trial: optuna.Trial) -> str | None:
    """The reason to skip a grid point that another trial has finished or is running (a race
    between workers after the first pass over the grid), else ``None``."""
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
