"""``effscale train``: train one detector (a preset, a config file or a spec) on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from effscale.detector.data.validate import validate_data
from effscale.detector.pretrained import PretrainedError, check_pretrained_fits
from effscale.detector.train import (
    MAX_EPOCHS,
    MAX_SECONDS,
    MAX_STEPS,
    DataSettings,
    DivergedError,
    TrainSettings,
    resolve_device,
    train_proxy,
)

from ..definition import CACHES as DATA_CACHES
from ..definition import COMPILE_MODES
from ..errors import ParameterError
from ._data_args import add_data_arguments, splits_from_args
from ._output import add_format_argument, json_text, print_records
from ._spec_args import add_spec_arguments, configs_from_args
from ._types import bounded_float, bounded_int

__all__ = ["configure", "run", "print_metrics", "check_device_and_out"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale train``."""
    parser.description = (
        "Train one detector and evaluate it with pycocotools. Writes metrics.json "
        "and checkpoint.pt to --out."
    )
    add_spec_arguments(parser)
    add_data_arguments(parser, needs="the train and val splits")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--epochs",
        type=bounded_float("number of epochs", 0, MAX_EPOCHS),
        help="budget in epochs (default 10)",
    )
    budget.add_argument(
        "--steps",
        type=bounded_int("number of steps", 1, MAX_STEPS),
        help="budget in optimizer steps",
    )
    budget.add_argument(
        "--seconds",
        type=bounded_float("number of seconds", 0, MAX_SECONDS),
        help="budget in seconds of training",
    )
    parser.add_argument("--batch-size", type=bounded_int("batch size", 2, 65536), default=16)
    parser.add_argument(
        "--lr", type=bounded_float("learning rate", 0, 10), default=2e-3, help="peak learning rate"
    )
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument(
        "--subset",
        type=bounded_int("subset", 1, 2**31 - 1),
        help="use N training images (fixed seed)",
    )
    parser.add_argument(
        "--workers",
        type=bounded_int("number of loader workers", 0, 256),
        default=0,
        help="data-loader worker processes",
    )
    parser.add_argument("--seed", type=bounded_int("seed", 0, 2**31 - 1), default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", help="folder for metrics.json and checkpoint.pt")
    parser.add_argument(
        "--checkpoint-every",
        type=bounded_int("number of steps", 0, MAX_STEPS),
        default=0,
        help="also checkpoint every N steps (0: only at epoch ends)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    parser.add_argument(
        "--pretrained",
        metavar="NAME|FILE",
        help="ImageNet weights for the backbone: a timm EfficientNet (e.g. tf_efficientnet_b0, "
        "from timm's cache) or a state-dict file; refused when they do not fit the backbone",
    )
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


def check_device_and_out(device: str, out: str | None) -> None:
    """Refuse ``--device`` that names no device of this machine and ``--out`` that is a file (or
    lies below one), as :class:`.ParameterError` naming the flag: found only after the data was
    read, or after training, otherwise."""
    try:
        resolve_device(device)
    except ValueError as exc:
        raise ParameterError("device", str(exc).removeprefix("device: ")) from None
    if out is None:
        return
    for folder in (Path(out), *Path(out).parents):
        if folder.exists():
            if not folder.is_dir():
                raise ParameterError(
                    "out", f"{folder} is a file, not a folder", "give a new or existing folder"
                )
            return


def print_metrics(metrics: dict, fmt: str, *, title: str) -> None:
    """Print a flat metrics dict as JSON or as a two-column table."""
    if fmt == "json":
        print(json_text(metrics))
        return

    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    print_records(rows, "table", title=title)


def run(args: argparse.Namespace) -> int:
    """Train, then print the metrics; returns 0."""

    if args.resume and not args.out:
        raise ValueError("--resume: needs --out, the folder that holds checkpoint.pt")
    check_device_and_out(args.device, args.out)  # before the data is read or anything trains
    splits = splits_from_args(args, ("train", "val"))
    train_check, _ = validate_data(splits["train"], splits["val"])  # before any training
    if args.num_classes == 90 and args.preset is None and getattr(args, "config", None) is None:
        args.num_classes = train_check.num_classes  # a spec: fit the data
    (config,) = configs_from_args(args)[:1]
    if args.pretrained is not None:  # refused in one line before any training
        try:
            check_pretrained_fits(config.backbone, args.pretrained, padding=config.padding)
        except PretrainedError as exc:
            raise ParameterError("pretrained", exc.problem, exc.fix) from None
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
        pretrained=args.pretrained,
    )
    try:
        result = train_proxy(
            config,
            data=DataSettings(
                train=splits["train"],
                val=splits["val"],
                train_subset=args.subset,
                num_workers=args.workers,
                cache=args.cache,
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
