"""``effscale flops``: params, multiply-adds and activations of presets or a scaling spec."""

from __future__ import annotations

import argparse

from effscale.detector.complexity import count_complexity

from ._output import add_format_argument, print_records
from ._spec_args import add_spec_arguments, configs_from_args

__all__ = ["configure", "run", "complexity_records"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale flops``."""
    parser.description = (
        "Count params, multiply-adds (MACs, per image) and activations (conv output "
        "elements per image) without allocating the model."
    )
    add_spec_arguments(parser)
    add_format_argument(parser)
    parser.set_defaults(func=run)


def complexity_records(configs) -> list[dict]:
    """One flat record per config: name, image_size, params, macs, gmacs, activations, and the
    architecture's effective dimensions."""
    records = []
    for config in configs:
        cost = count_complexity(config)
        records.append(
            {
                "name": config.name,
                "image_size": list(config.image_size),
                "params": cost.params,
                "macs": cost.macs,
                "gmacs": round(cost.gmacs, 3),
                "activations": cost.activations,
                "width_multiplier": config.backbone.width_multiplier,
                "depth_multiplier": config.backbone.depth_multiplier,
                "bifpn_channels": config.fpn.channels,
                "bifpn_repeats": config.fpn.repeats,
                "head_repeats": config.head.repeats,
                "fusion": config.fpn.fusion,
            }
        )
    return records


def run(args: argparse.Namespace) -> int:
    """Print the complexity table; returns 0."""
    records = complexity_records(configs_from_args(args))
    if args.format == "table":
        rows = [
            {
                "name": r["name"],
                "size": "x".join(map(str, r["image_size"])),
                "params (M)": r["params"] / 1e6,
                "GMACs": r["macs"] / 1e9,
                "activations (M)": r["activations"] / 1e6,
                "backbone w x d": f"{r['width_multiplier']:g} x {r['depth_multiplier']:g}",
                "BiFPN W x D": f"{r['bifpn_channels']} x {r['bifpn_repeats']}",
                "head": r["head_repeats"],
                "fusion": r["fusion"],
            }
            for r in records
        ]
        print_records(rows, "table", title="Complexity per image (MACs = multiply-adds)")
    elif args.format == "csv":
        for r in records:
            r["image_size"] = "x".join(map(str, r["image_size"]))
        print_records(records, "csv")
    else:
        print_records(records, "json")
    return 0
