"""``effscale search STUDY.toml``: run or resume a scaling search, then print the best point."""

from __future__ import annotations

import argparse
import sys

from ..definition import StudyDefinition
from ..output import shell_path
from ..runners import run_study
from ..space import grid_size
from ..study_file import load_study_file
from ..templates import shipped_studies
from ..trials import (
    find_region,
    load_study,
    load_trials,
    study_confirmations,
    trial_record,
)
from ._output import print_records
from ._types import positive_int, positive_int_or_auto

__all__ = ["configure", "run", "parse_gpus"]


def parse_gpus(text: str) -> tuple[int, ...]:
    """Parse ``--gpus``: comma-separated distinct device indices such as ``0,1,3``."""
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip() != "")
    except ValueError:
        gpus = ()
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(
            f"invalid GPU list {text!r}; use distinct device indices such as 0,1"
        )
    return gpus


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")) or (value > 1 and value % 1):
        raise argparse.ArgumentTypeError(
            f"invalid GPU share {text!r}; use a fraction in [0, 1] such as 0.25, or a whole number"
        )
    return value


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid CPU count {text!r}; use a number > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}; use an integer >= 0")
    return value


#: the Ray-only options: (argument name, ray_runner.run_study keyword)
_RAY_OPTIONS = (
    ("--address", "address"),
    ("--cpus-per-trial", "cpus_per_trial"),
    ("--gpus-per-trial", "gpus_per_trial"),
    ("--max-concurrent", "max_concurrent"),
    ("--max-failures", "max_failures"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale search``."""
    parser.description = (
        "Run (or resume) the Optuna study described by STUDY.toml until it holds "
        "n_trials finished trials; rerunning a finished study adds none."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument(
        "--n-trials",
        type=positive_int(),
        metavar="N",
        help="finished trials wanted (default: [study] n_trials)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int(),
        metavar="K",
        help="parallel worker processes (default: [execution] workers)",
    )
    parser.add_argument(
        "--gpus", type=parse_gpus, metavar="0,1,..", help="GPUs to use; workers become GPU slots"
    )
    parser.add_argument(
        "--trials-per-gpu",
        type=positive_int_or_auto("trials per GPU"),
        metavar="M|auto",
        help="concurrent trials per GPU; auto chooses from the GPU memory, the "
        "CPU cores and the largest trial (default: [execution] "
        "trials_per_gpu, itself auto by default)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="override [study] storage (sqlite:///x.db, journal:///x.journal, postgresql://..)",
    )
    parser.add_argument(
        "--backend",
        choices=("optuna", "ray"),
        help="override [execution] backend (ray: run the trials with Ray Tune, "
        "see docs/cluster.md)",
    )
    ray = parser.add_argument_group(
        "Ray backend",
        'only with --backend ray (or [execution] backend = "ray"); defaults from [execution]',
    )
    ray.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="join a running Ray cluster (default: start a local Ray)",
    )
    ray.add_argument("--cpus-per-trial", type=_cpus, metavar="C", help="CPUs per trial (1)")
    ray.add_argument(
        "--gpus-per-trial",
        type=_share,
        metavar="G",
        help="GPUs per trial; fractions share a GPU (default 1/trials_per_gpu with --gpus, else 0)",
    )
    ray.add_argument(
        "--max-concurrent",
        type=positive_int(),
        metavar="N",
        help="trials running at once (default: what the cluster fits)",
    )
    ray.add_argument(
        "--max-failures",
        type=_count,
        metavar="R",
        help="retries of a crashed trial before it is recorded FAIL (1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study; prints the best feasible trial. Returns 0, or 1 if a worker crashed or
    every trial failed (none complete or pruned after this run started some)."""
    definition = load_study_file(args.study)
    ray_options = {key: getattr(args, key, None) for _, key in _RAY_OPTIONS}
    summary = run_study(
        definition,
        backend=args.backend,
        n_trials=args.n_trials,
        workers=args.workers,
        gpus=args.gpus,
        trials_per_gpu=args.trials_per_gpu,
        storage=args.storage,
        quiet=args.quiet,
        **ray_options,
    )
    print(
        f"study {summary.study_name!r}: {summary.n_complete} complete, {summary.n_pruned} "
        f"pruned, {summary.n_failed} failed ({summary.started} started now, "
        f"{summary.target} wanted) in {summary.storage_url}"
    )
    _print_best(definition, args.storage, summary.best_number)
    _print_verdict(definition, args.storage)
    if summary.failed_workers:
        print(
            f"effscale search: {len(summary.failed_workers)} worker(s) exited with codes "
            f"{', '.join(map(str, summary.failed_workers))}; rerun to finish the study"
        )
        return 1
    if summary.started and summary.n_failed and not summary.n_complete + summary.n_pruned:
        print(
            f"effscale search: every trial failed ({summary.n_failed}); see their fail_reason "
            f"and error with `effscale status {shell_path(args.study)}`, fix the cause and rerun",
            file=sys.stderr,
        )
        return 1
    return 0


#: effdet's training throughput on one H200, four 256-px D0 trainings packed together (images per
#: second; ../shared/notes/h200-effdet-measurements.md): the reference until effscale's own is
#: measured on that machine
H200_PACKED_IMAGES_PER_S = 576.0
#: the shipped study that gives a real answer on a GPU
GPU_STUDY = "efficientnet_compound"


def _print_verdict(definition: StudyDefinition, storage: str | None) -> None:
    """The region's verdict line; on a CPU study without a resolved answer, what a real one
    needs."""
    study = load_study(definition, storage)
    region = find_region(study.get_trials(deepcopy=False), confirmations=study_confirmations(study))
    print(f"verdict: {region.advice}")
    on_gpu = definition.train.device == "cuda" or bool(definition.execution.gpus)
    if region.verdict == "resolved" or definition.objective.kind != "train" or on_gpu:
        return
    path = shipped_studies().get(GPU_STUDY)
    if path is None:
        return
    gpu = load_study_file(path)
    points = grid_size(gpu.grid()) if gpu.study.sampler == "grid" else gpu.target_trials()
    images = gpu.data.generate.train if gpu.data and gpu.data.generate else None
    if images is None or gpu.train.epochs is None:
        return
    total = points * len(gpu.study.seeds) * gpu.train.epochs * images
    hours = total / H200_PACKED_IMAGES_PER_S / 3600
    print(
        f"a real answer needs GPU training: the {GPU_STUDY} study ({points} points x "
        f"{len(gpu.study.seeds)} seeds x {gpu.train.epochs} epochs of {images} images = "
        f"{total / 1e6:.1f} M training images) takes about {hours:.1f} h on one H200 at effdet's "
        f"measured {H200_PACKED_IMAGES_PER_S:.0f} img/s for 4 packed 256-px trainings; start "
        f"one with `effscale init gpu_study --from {GPU_STUDY}`"
    )


def _print_best(definition: StudyDefinition, storage: str | None, number: int | None) -> None:
    if number is None:
        print("no feasible trial has completed yet")
        return
    trials = {t.number: t for t in load_trials(definition, storage)}
    record = trial_record(trials[number])
    row = {
        "trial": number,
        "alpha": record["alpha"],
        "beta": record["beta"],
        "gamma": record["gamma"],
        "AP": record["ap"],
        "cost ratio": record["cost_ratio"],
    }
    if record.get("gmacs") is not None:
        row["GMACs (phi=1)"] = record["gmacs"]
    print_records([row], "table", title="Best feasible point")
