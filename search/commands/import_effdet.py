"""``effscale import``: an effdet checkpoint as an effscale config file and checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from effscale.detector.complexity import count_complexity
from effscale.detector.effdet_weights import (
    effdet_output_difference,
    import_effdet,
    read_effdet_checkpoint,
    write_imported,
)

from ..output import atomic_directory

__all__ = ["TOLERANCE", "configure", "run"]

#: the relative difference to effdet's outputs above which an import is refused (see
#: ``effdet_output_difference``; float32 agrees to about 1e-6)
TOLERANCE = 1e-4


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale import``."""
    parser.description = (
        "Bring an effdet 0.4.1 checkpoint into effscale: writes OUT/<name>.toml (the config) "
        "and OUT/checkpoint.pt (the weights by name), which `effscale evaluate OUT` reads and "
        "`effscale train --config OUT/<name>.toml --out OUT --resume` fine-tunes."
    )
    parser.add_argument("checkpoint", help="an effdet state-dict or training checkpoint file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="the effdet model it belongs to, e.g. tf_efficientdet_d0")
    which.add_argument(
        "--effdet-config", help="its effdet model config as JSON (e.g. a *.effdet.json export)"
    )
    parser.add_argument("--out", required=True, help="folder to write (atomically)")
    parser.add_argument("--name", help="the config's name (default: the effdet config's)")
    parser.add_argument("--ema", action="store_true", help="take the checkpoint's EMA weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier import")
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip running both models on a 128x128 image to check equal outputs",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import, compare with effdet (when installed), write; returns 0."""
    source = args.model or args.effdet_config
    config, state, effdet_config = import_effdet(
        args.checkpoint, source, name=args.name, ema=args.ema
    )
    note = "not compared (--no-compare)"
    if not args.no_compare:
        try:
            import effdet  # noqa: F401 - effdet is optional: compare only where it is installed
        except ModuleNotFoundError:
            note = "not compared (effdet is not installed)"
        else:
            theirs = read_effdet_checkpoint(args.checkpoint, ema=args.ema)
            difference = effdet_output_difference(effdet_config, theirs)
            if difference > TOLERANCE:
                raise ValueError(
                    f"checkpoint: effscale's outputs differ from effdet's by {difference:.2g} "
                    f"(relative, more than {TOLERANCE:g}); nothing written"
                )
            note = f"outputs equal effdet's within {difference:.1e} (relative, 128x128 image)"
    with atomic_directory(args.out, command="import", overwrite=args.overwrite) as tmp:
        config_file, checkpoint_file = write_imported(
            tmp,
            config,
            state,
            source={"checkpoint": str(Path(args.checkpoint).resolve()), "effdet": str(source)},
        )
    out = Path(args.out).resolve()
    params = count_complexity(config).params
    print(
        f"imported {config.name}: {params:,} params, {config.num_classes} classes, "
        f"padding {config.padding}"
    )
    print(f"config: {out / config_file.name}")
    print(f"checkpoint: {out / checkpoint_file.name}")
    print(note)
    return 0
