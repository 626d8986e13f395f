"""Arguments that describe a detector: ``--preset``, ``--config`` or a scaling spec."""

from __future__ import annotations

import argparse

from effscale.detector.config import PRESET_NAMES, DetectorConfig, from_scaling, preset
from effscale.detector.effdet_config import load_detector_config
from effscale.detector.scaling import BifpnRule, CompoundCoefficients, ResolutionRule, ScalingSpec

__all__ = ["add_spec_arguments", "configs_from_args", "parse_preset_list", "parse_image_size"]


def add_spec_arguments(parser: argparse.ArgumentParser, *, allow_config: bool = True) -> None:
    """Add the detector-choosing flags: a preset, a config file, or a compound-scaling spec."""
    group = parser.add_argument_group("detector (one of --preset, --config, or spec flags)")
    group.add_argument("--preset", help="d0..d7, a range like d0-d7, or a comma list (d0,d3)")
    if allow_config:
        group.add_argument(
            "--config", help="a config file written by effscale (.toml, .json or .effdet.json)"
        )
    group.add_argument("--phi", type=float, help="compound coefficient φ (may be negative)")
    group.add_argument("--alpha", type=float, default=1.2, help="depth coefficient α (default 1.2)")
    group.add_argument("--beta", type=float, default=1.1, help="width coefficient β (default 1.1)")
    group.add_argument(
        "--gamma",
        type=float,
        default=1.15,
        help="resolution coefficient γ, used with --resolution-rule compound",
    )
    group.add_argument(
        "--resolution-rule",
        choices=("linear", "compound"),
        default="linear",
        help="linear: base + step·φ (paper, default); compound: base·γ^φ",
    )
    group.add_argument("--resolution-base", type=float, default=512.0, help="pixels at φ=0")
    group.add_argument(
        "--resolution-step", type=float, default=128.0, help="pixels per unit φ (linear rule)"
    )
    group.add_argument("--bifpn-width", type=float, default=64.0, help="BiFPN channels at φ=0")
    group.add_argument("--bifpn-growth", type=float, default=1.35, help="BiFPN width growth per φ")
    group.add_argument("--bifpn-depth", type=float, default=3.0, help="BiFPN cells at φ=0")
    group.add_argument("--bifpn-depth-step", type=float, default=1.0, help="BiFPN cells per φ")
    group.add_argument("--head-depth", type=int, default=3, help="head convs at φ=0")
    group.add_argument("--fusion", choices=("fastattn", "attn", "sum"), default="fastattn")
    group.add_argument("--image-size", help="override the input size: 512 or HxW (multiples of 8)")
    parser.add_argument(
        "--num-classes", type=int, default=90, help="number of classes (default 90)"
    )


def parse_preset_list(text: str) -> list[str]:
    """``d3`` → [d3]; ``d0-d7`` → [d0..d7]; ``d0,d2`` → [d0, d2]."""
    names: list[str] = []
    for part in text.lower().split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            if lo not in PRESET_NAMES or hi not in PRESET_NAMES:
                raise ValueError(f"--preset: unknown range {part!r}; use e.g. d0-d7")
            names += list(PRESET_NAMES[PRESET_NAMES.index(lo) : PRESET_NAMES.index(hi) + 1])
        elif part:
            if part not in PRESET_NAMES:
                raise ValueError(
                    f"--preset: unknown preset {part!r}; choose from {', '.join(PRESET_NAMES)}"
                )
            names.append(part)
    if not names:
        raise ValueError("--preset: empty; use e.g. d0 or d0-d7")
    return names


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``512`` → (512, 512); ``384x640`` → (384, 640) (height x width)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"--image-size: expected N or HxW in pixels, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"--image-size: expected N or HxW in pixels, got {text!r}")


def configs_from_args(args: argparse.Namespace) -> list[DetectorConfig]:
    """The configs the flags describe (several for a preset range)."""
    size = parse_image_size(getattr(args, "image_size", None))
    chosen = [name for name in ("preset", "config", "phi") if getattr(args, name, None) is not None]
    if len(chosen) != 1:
        raise ValueError(
            "detector: give exactly one of --preset, --config or --phi "
            f"(got {', '.join('--' + c for c in chosen) or 'none'})"
        )
    if args.preset is not None:
        configs = [
            preset(name, num_classes=args.num_classes) for name in parse_preset_list(args.preset)
        ]
    elif getattr(args, "config", None) is not None:
        configs = [load_detector_config(args.config)]
    else:
        spec = ScalingSpec(
            coefficients=CompoundCoefficients(alpha=args.alpha, beta=args.beta, gamma=args.gamma),
            bifpn=BifpnRule(
                width_base=args.bifpn_width,
                width_growth=args.bifpn_growth,
                depth_base=args.bifpn_depth,
                depth_step=args.bifpn_depth_step,
                head_depth_base=args.head_depth,
            ),
            resolution=ResolutionRule(
                kind=args.resolution_rule, base=args.resolution_base, step=args.resolution_step
            ),
        )
        configs = [from_scaling(spec, args.phi, num_classes=args.num_classes, fusion=args.fusion)]
    if size is not None:
        configs = [c.replace(image_size=size) for c in configs]
    return configs
