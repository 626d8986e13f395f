"""``effscale export``: write a scaled D0..D7-style family as configs, tables and a manifest.

From a study (``effscale export STUDY.toml [--trial N | --best]``) the coefficients are the
chosen trial's; without a study they are given (``--alpha --beta --gamma`` and the rule flags, or
``--paper`` for the EfficientDet paper's constants). See :mod:`effscale.search.export`.
"""

from __future__ import annotations

import argparse
from typing import Any

from effscale.detector.effdet_config import EFFSCALE_TIMM_BACKBONE
from effscale.detector.scaling import (
    PHI_RANGE,
    BifpnRule,
    CompoundCoefficients,
    ResolutionRule,
    ScalingSpec,
)

from ..export import EFFDET_IMPORT, ExportResult, export_coefficients, export_study, family_records
from ..family import OFFICIAL_BACKBONES
from ..study_file import load_study_file
from ._output import print_records
from ._types import nonnegative_int

__all__ = ["FLAGS", "configure", "run", "parse_phi_range", "spec_from_args"]

#: coefficient-mode flags (dest -> paper default); they are refused with a study file
_COEFFICIENT_FLAGS = {
    "alpha": 1.2,
    "beta": 1.1,
    "gamma": 1.15,
    "bifpn_width": 64.0,
    "bifpn_growth": 1.35,
    "bifpn_depth": 3.0,
    "bifpn_depth_step": 1.0,
    "head_depth": 3,
    "head_depth_period": 3.0,
    "resolution_rule": "linear",
    "resolution_base": 512.0,
    "resolution_step": 128.0,
    "backbone_width": 1.0,
    "backbone_depth": 1.0,
    "fusion": "fastattn",
    "backbone_table": "compound",
}
#: a library parameter named in an error -> the flag that sets it
FLAGS = {"phis": "--phi", "fmt": "--format"}
#: the members exported when ``--phi`` is not given
DEFAULT_PHIS = "0-7"

#: a ScalingSpec field named in an error -> the flag that sets it
_FIELD_FLAGS = {
    "alpha": "--alpha",
    "beta": "--beta",
    "gamma": "--gamma",
    "width_base": "--bifpn-width",
    "width_growth": "--bifpn-growth",
    "depth_base": "--bifpn-depth",
    "depth_step": "--bifpn-depth-step",
    "head_depth_base": "--head-depth",
    "head_depth_period": "--head-depth-period",
    "kind": "--resolution-rule",
    "base": "--resolution-base",
    "step": "--resolution-step",
    "backbone_width": "--backbone-width",
    "backbone_depth": "--backbone-depth",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale export``."""
    parser.description = (
        "Scale the chosen trial's coefficients (or given ones) to phi = 0..7, write "
        "one config per member, family.csv, family.md and manifest.json (and "
        "study.png for a study) into --out, atomically."
    )
    parser.add_argument(
        "study",
        metavar="STUDY.toml",
        nargs="?",
        help="the study file (omit it to export given coefficients)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--trial",
        type=nonnegative_int("trial number"),
        metavar="N",
        help="export trial N (feasible, COMPLETE; a Pareto trial for two objectives)",
    )
    which.add_argument(
        "--best", action="store_true", help="export the best feasible trial (the default)"
    )
    parser.add_argument(
        "--phi",
        default=None,
        metavar="RANGE",
        help="members to export: 0-7 (default; from a study, up to its last legal member), 2-4 "
        "or 3",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: <study folder>/exports/<name>-trial<N>; "
        "required without a study)",
    )
    parser.add_argument(
        "--format",
        choices=("toml", "json", "effdet"),
        default="toml",
        help="config files: toml (default), json, or effdet (TOML plus "
        "<name>.effdet.json for members effdet can build)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--prefix", default="d", help="member name prefix (default d: d0..d7)")
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classes of the exported models (default: the study's data, or 90)",
    )
    study = parser.add_argument_group("study exports")
    study.add_argument("--storage", metavar="URL", help="override [study] storage")
    study.add_argument(
        "--anchor",
        choices=("base", "proxy"),
        default="base",
        help="phi=0 is the study's [base] (default) or the search's proxy",
    )
    study.add_argument("--no-plot", action="store_true", help="skip study.png")
    given = parser.add_argument_group(
        "given coefficients (no STUDY.toml; unset flags take the paper's values)"
    )
    given.add_argument(
        "--paper",
        action="store_true",
        help="the EfficientDet paper's constants and rules (flags still override)",
    )
    for name, kind, text in (
        ("alpha", float, "backbone depth coefficient (paper 1.2)"),
        ("beta", float, "backbone width coefficient (paper 1.1)"),
        ("gamma", float, "resolution coefficient, with --resolution-rule compound (paper 1.15)"),
        ("bifpn-width", float, "BiFPN channels at phi=0 (64)"),
        ("bifpn-growth", float, "BiFPN width growth per phi (1.35)"),
        ("bifpn-depth", float, "BiFPN cells at phi=0 (3)"),
        ("bifpn-depth-step", float, "BiFPN cells added per phi (1)"),
        ("head-depth", int, "head convs at phi=0 (3)"),
        ("head-depth-period", float, "one more head conv every this many phi (3)"),
        ("resolution-base", float, "pixels at phi=0 (512)"),
        ("resolution-step", float, "pixels per phi, linear rule (128)"),
        ("backbone-width", float, "backbone width multiplier at phi=0 (1.0 = B0)"),
        ("backbone-depth", float, "backbone depth multiplier at phi=0 (1.0 = B0)"),
    ):
        given.add_argument(f"--{name}", type=kind, default=None, help=text)
    given.add_argument(
        "--resolution-rule",
        choices=("linear", "compound"),
        default=None,
        help="linear: base + step*phi (paper); compound: base*gamma^phi",
    )
    given.add_argument(
        "--fusion",
        choices=("fastattn", "attn", "sum"),
        default=None,
        help="BiFPN fusion (fastattn)",
    )
    given.add_argument(
        "--backbone-table",
        choices=("compound", "official"),
        default=None,
        help="compound: beta^phi, alpha^phi (default); official: the released B0..B6 per phi",
    )
    parser.set_defaults(func=run)


def parse_phi_range(text: str) -> tuple[int, ...]:
    """``"0-7"`` → (0, .., 7); ``"3"`` → (3,); ``"2-4"`` → (2, 3, 4). Integers in [0, 12].

    Raises ``ValueError`` naming ``--phi`` for malformed text or a range with no members.
    """
    raw = str(text).strip()
    parts = raw.split("-")
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"--phi: expected N or LOW-HIGH with integers, got {raw!r}; write e.g. 0-7 or 3"
        ) from None
    top = int(PHI_RANGE[1])
    if low > high:
        raise ValueError(
            f"--phi: range {raw} has no members (LOW > HIGH); write LOW-HIGH with "
            "LOW <= HIGH, e.g. 0-7"
        )
    if low < 0 or high > top:
        raise ValueError(
            f"--phi: {raw} leaves [0, {top}]; exported members are φ = 0..{top}, e.g. 0-7"
        )
    return tuple(range(low, high + 1))


def _check_paper_phis(phis: tuple[int, ...], text: str) -> None:
    """Refuse members the paper's family does not define: EfficientDet is D0..D7."""
    top = max(OFFICIAL_BACKBONES)
    beyond = [phi for phi in phis if phi > top]
    if beyond:
        raise ValueError(
            f"--phi: the paper's family is D0..D{top} (φ = 0..{top}); {text} asks for "
            f"φ = {', '.join(map(str, beyond))}, which the paper does not define; write e.g. "
            f"0-{top}, or extrapolate with given coefficients (--alpha 1.2 --beta 1.1 "
            "--gamma 1.15) without --paper"
        )


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def spec_from_args(args: argparse.Namespace) -> tuple[ScalingSpec, str, str]:
    """The (ScalingSpec, fusion, backbone table) that the coefficient flags describe."""

    values: dict[str, Any] = {
        dest: getattr(args, dest) if getattr(args, dest) is not None else default
        for dest, default in _COEFFICIENT_FLAGS.items()
    }
    try:
        spec = ScalingSpec(
            coefficients=CompoundCoefficients(
                alpha=values["alpha"], beta=values["beta"], gamma=values["gamma"]
            ),
            bifpn=BifpnRule(
                width_base=values["bifpn_width"],
                width_growth=values["bifpn_growth"],
                depth_base=values["bifpn_depth"],
                depth_step=values["bifpn_depth_step"],
                head_depth_base=values["head_depth"],
                head_depth_period=values["head_depth_period"],
            ),
            resolution=ResolutionRule(
                kind=values["resolution_rule"],
                base=values["resolution_base"],
                step=values["resolution_step"],
            ),
            backbone_width=values["backbone_width"],
            backbone_depth=values["backbone_depth"],
        )
    except ValueError as exc:
        key, _, rest = str(exc).partition(": ")
        raise ValueError(f"{_FIELD_FLAGS.get(key, key)}: {rest}") from None
    return spec, values["fusion"], values["backbone_table"]


def _report(result: ExportResult, fmt: str) -> None:

    rows = [
        {k: v for k, v in r.items() if k not in ("fusion",)} for r in family_records(result.family)
    ]
    print_records(rows, "table", title=f"exported to {result.out}")
    if result.family.left_out:
        names = [name for name, _ in result.family.left_out]
        first, why = result.family.left_out[0]
        print(
            f"left out {', '.join(names)}: {first} is not a legal detector ({why}); the "
            f"coefficients are too large for them (--phi 0-{result.family.members[-1].phi} is "
            "what was written)"
        )
    if fmt != "effdet":
        return
    written = [m.name for m in result.family.members if m.name not in result.unsupported]
    print(f"effdet configs: {', '.join(written) or 'none'}")
    for name, reasons in result.unsupported.items():
        print(f"effdet_unsupported {name}: {'; '.join(reasons)}")
    members = result.manifest["members"]
    needing = [n for n in written if members[n].get("effdet_backbone") == EFFSCALE_TIMM_BACKBONE]
    if needing:
        print(
            f"{', '.join(needing)} use effscale's timm backbone: run `{EFFDET_IMPORT}` before "
            "effdet builds them"
        )


def run(args: argparse.Namespace) -> int:
    """Export the family; prints its table. Returns 0."""

    phis = parse_phi_range(args.phi or DEFAULT_PHIS)
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes: must be >= 1, got {args.num_classes}")
    given = [dest for dest in _COEFFICIENT_FLAGS if getattr(args, dest) is not None]
    if args.study is not None:
        if given or args.paper:
            flag = _flag(given[0]) if given else "--paper"
            raise ValueError(
                f"{flag}: the coefficients come from STUDY.toml's trial; drop "
                f"{flag}, or drop STUDY.toml to export given coefficients"
            )

        definition = load_study_file(args.study)
        result = export_study(
            definition,
            out=args.out,
            phis=None if args.phi is None else phis,
            trial=args.trial,
            fmt=args.format,
            overwrite=args.overwrite,
            storage=args.storage,
            anchor=args.anchor,
            prefix=args.prefix,
            num_classes=args.num_classes,
            plot=not args.no_plot,
        )
    else:
        if args.paper:
            _check_paper_phis(phis, args.phi or DEFAULT_PHIS)
        if args.trial is not None or args.best:
            raise ValueError(
                f"{'--trial' if args.trial is not None else '--best'}: needs "
                "STUDY.toml; give the study file or drop the flag"
            )
        if args.storage is not None:
            raise ValueError("--storage: needs STUDY.toml; give the study file or drop the flag")
        if not args.paper and not all(
            getattr(args, k) is not None for k in ("alpha", "beta", "gamma")
        ):
            if args.backbone_table != "official":
                raise ValueError(
                    "export: give STUDY.toml, or --alpha, --beta and --gamma (or "
                    "--paper for the EfficientDet paper's constants)"
                )
        if args.backbone_table == "official" and (args.alpha is not None or args.beta is not None):
            raise ValueError(
                f"{'--alpha' if args.alpha is not None else '--beta'}: "
                "--backbone-table official replaces the backbone coefficients; "
                "drop it or use --backbone-table compound"
            )
        if args.out is None:
            raise ValueError(
                "--out: required when exporting given coefficients; write e.g. --out families/paper"
            )
        spec, fusion, table = spec_from_args(args)
        result = export_coefficients(
            spec,
            out=args.out,
            phis=phis,
            fusion=fusion,
            fmt=args.format,
            overwrite=args.overwrite,
            prefix=args.prefix,
            num_classes=args.num_classes or 90,
            backbone_table=table,
        )
    _report(result, args.format)
    return 0
