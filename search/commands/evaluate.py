"""``effscale evaluate``: COCO metrics of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from effscale.detector.config import config_from_dict
from effscale.detector.data import ResizePad, load_split, make_loader
from effscale.detector.evaluate import evaluate_model
from effscale.detector.model import build_model
from effscale.detector.train import load_checkpoint, resolve_device

from ._output import add_format_argument
from .train import print_metrics

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale evaluate``."""
    parser.description = "Evaluate a checkpoint written by `effscale train` with pycocotools."
    parser.add_argument("checkpoint", help="checkpoint.pt, or the --out folder holding it")
    parser.add_argument("--data", required=True, help="dataset folder with train/ and val/")
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

    data_dir = Path(args.data)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data: dataset folder not found: {data_dir}")
    state = load_checkpoint(args.checkpoint)
    config = config_from_dict(state["config"])
    device = resolve_device(args.device)
    model = build_model(config)
    weights = (
        state["ema"] if args.weights == "ema" and state.get("ema") is not None else state["model"]
    )
    model.load_state_dict(weights)
    model.to(device)
    dataset = load_split(data_dir, args.split, transform=ResizePad(config.image_size))
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
