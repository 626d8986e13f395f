"""``effscale train``: train one detector (a preset, a config file or a spec) on a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from effscale.detector.data import load_split
from effscale.detector.train import DataSettings, DivergedError, TrainSettings, train_proxy

from ..definition import CACHES as DATA_CACHES
from ..definition import COMPILE_MODES
from ._output import add_format_argument, print_records
from ._spec_args import add_spec_arguments, configs_from_args

__all__ = ["configure", "run", "print_metrics"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale train``."""
    parser.description = (
        "Train one detector and evaluate it with pycocotools. Writes metrics.json "
        "and checkpoint.pt to --out."
    )
    add_spec_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="dataset folder with train/ and val/ "
        "(each: instances.json + images/); make one with `effscale make-data`",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="budget in epochs (default 10)")
    budget.add_argument("--steps", type=int, help="budget in optimizer steps")
    budget.add_argument("--seconds", type=float, help="budget in seconds of training")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--subset", type=int, help="use N training images (fixed seed)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", help="folder for metrics.json and checkpoint.pt")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also checkpoint every N steps (0: only at epoch ends)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    speed = parser.add_argument_group("speed levers (defaults: what pays on the device)")
    speed.add_argument(
        "--cache",
        choices=DATA_CACHES,
        default="auto",
        help="keep the training split on the device and augment it there "
        "(auto: on CUDA when it fits in 5%% of the device)",
    )
    speed.add_argument(
        "--cuda-graph",
        type=_on_off_auto,
        default="auto",
        metavar="auto|on|off",
        help="replay the training step as one CUDA graph (auto: on CUDA)",
    )
    speed.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="torch.compile mode (costs minutes per architecture)",
    )
    speed.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    speed.add_argument(
        "--fused-optimizer",
        type=_on_off_auto,
        default="auto",
        metavar="auto|on|off",
        help="single-kernel optimizer (auto: on CUDA)",
    )
    speed.add_argument(
        "--check-every",
        type=_steps_or_auto,
        default="auto",
        metavar="N|auto",
        help="check the loss for NaN every N steps (auto: 1 on CPU, 20 on CUDA)",
    )
    add_format_argument(parser, choices=("table", "json"))
    parser.set_defaults(func=run)


def _on_off_auto(text: str) -> bool | str:
    choices: dict[str, bool | str] = {
        "auto": "auto",
        "on": True,
        "off": False,
        "true": True,
        "false": False,
    }
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return choices[text.lower()]


def _steps_or_auto(text: str) -> int | str:
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of steps >= 1 or auto, got {text!r}")
    return int(text)


def print_metrics(metrics: dict, fmt: str, *, title: str) -> None:
    """Print a flat metrics dict as JSON or as a two-column table."""
    if fmt == "json":
        print(json.dumps(metrics, indent=2, default=float))
        return

    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    print_records(rows, "table", title=title)


def run(args: argparse.Namespace) -> int:
    """Train, then print the metrics; returns 0."""

    if args.resume and not args.out:
        raise ValueError("--resume: needs --out, the folder that holds checkpoint.pt")
    data_dir = Path(args.data)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"--data: dataset folder not found: {data_dir}; create one with "
            "`effscale make-data DIR`"
        )
    if args.num_classes == 90 and args.preset is None and getattr(args, "config", None) is None:
        args.num_classes = load_split(data_dir, "train").num_classes  # a spec: fit the data
    (config,) = configs_from_args(args)[:1]
    settings = TrainSettings(
        epochs=args.epochs,
        steps=args.steps,
        seconds=args.seconds,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        cuda_graph=args.cuda_graph,
        compile=args.compile,
        channels_last=args.channels_last,
        fused_optimizer=args.fused_optimizer,
        check_every=args.check_every,
    )
    try:
        result = train_proxy(
            config,
            data=DataSettings(
                dir=data_dir, train_subset=args.subset, num_workers=args.workers, cache=args.cache
            ),
            settings=settings,
            device=args.device,
            out_dir=args.out,
            resume=args.resume,
            quiet=args.quiet or args.format == "json",
        )
    except DivergedError as exc:
        print(f"effscale train: error: {exc}", file=sys.stderr)
        return 1
    metrics: dict[str, Any] = {
        **result.metrics,
        "images_per_s": result.images_per_s,
        "seconds": result.seconds,
        "steps": result.steps,
        "epochs": result.epochs,
    }
    if args.format == "json":
        metrics["levers"] = result.levers
    print_metrics(metrics, args.format, title=f"{config.name}: COCO box metrics")
    if args.format != "json":
        print_records(
            [{"lever": k, "in effect": v} for k, v in result.levers.items()],
            "table",
            title="speed levers",
        )
    sys.stdout.flush()
    return 0
