"""``effscale evaluate``: COCO metrics of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse

from effscale.detector.config import config_from_dict
from effscale.detector.data import ResizePad, make_loader, open_split
from effscale.detector.data.validate import validate_split
from effscale.detector.evaluate import evaluate_model
from effscale.detector.model import build_model
from effscale.detector.train import load_checkpoint, resolve_device

from ._data_args import add_data_arguments, splits_from_args
from ._output import add_format_argument
from .train import check_device_and_out, print_metrics

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale evaluate``."""
    parser.description = "Evaluate a checkpoint written by `effscale train` with pycocotools."
    parser.add_argument("checkpoint", help="checkpoint.pt, or the --out folder holding it")
    add_data_arguments(parser, needs="the split chosen by --split")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="evaluate the EMA weights (default, when present) or the raw ones",
    )
    add_format_argument(parser, choices=("table", "json"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics; returns 0."""

    check_device_and_out(args.device, None)
    state = load_checkpoint(args.checkpoint)  # verified (CRC, keys, finite weights) first
    files = splits_from_args(args, (args.split,))[args.split]
    validate_split(files, args.split)
    config = config_from_dict(state["config"])
    device = resolve_device(args.device)
    model = build_model(config)
    weights = (
        state["ema"] if args.weights == "ema" and state.get("ema") is not None else state["model"]
    )
    model.load_state_dict(weights)
    model.to(device)
    dataset = open_split(files, transform=ResizePad(config.image_size))
    loader = make_loader(dataset, batch_size=max(2, args.batch_size), train=False)
    metrics = evaluate_model(
        model, loader, config=config, dataset=dataset, device=device, autocast_dtype=None
    )
    print_metrics(
        {**metrics, "step": state["step"]},
        args.format,
        title=f"{config.name} at step {state['step']}: COCO box metrics",
    )
    return 0
