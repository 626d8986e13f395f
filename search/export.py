"""Export a scaled detector family: the coefficients of a study trial (or given ones) applied at
φ = 0..7, one legal config per member, tables of their cost and a manifest.

Where the coefficients come from
--------------------------------
* A study (:func:`export_study`): by default the best feasible COMPLETE trial; with two objectives
  (AP, MACs) the highest-AP trial of the Pareto front, or a named Pareto trial
  (:func:`.trials.choose_trial`). The trial's params and user attrs give ``alpha``, ``beta``,
  ``gamma`` (a user attr when derived in solve mode), ``width_growth``, ``depth_step`` and
  ``fusion`` (:func:`.trials.trial_coordinates`).
* Explicit coefficients (:func:`export_coefficients`): any :class:`~effscale.detector.scaling.ScalingSpec`,
  e.g. the paper's :data:`~effscale.detector.scaling.PAPER_SPEC`, optionally with the official B0..B6
  backbones per φ (``backbone_table="official"``).

What a study family grows from (``anchor``): see :mod:`.family`.

Which presets the paper's rules reproduce
-----------------------------------------
With :data:`PAPER_SPEC` (W = 64·1.35^φ rounded to 8, D = 3+φ, D_head = 3+⌊φ/3⌋, R = 512+128φ)
the BiFPN width gives 64, 88, 120, 160, 216, 288, 384, 520 against the released 64, 88, 112, 160,
224, 288, 384, 384; depth and resolution follow the release up to D4 (D5 is 1280 px and 7 cells,
D6 and D7 stop at 8 cells and use sum fusion, D7 is 1536 px with anchor scale 5). Backbones as
``beta**phi``/``alpha**phi`` are (1.1, 1.2) at φ=1 where the release uses B1 = (1.0, 1.1). So:

* compound backbones (``beta**phi``, ``alpha**phi``): only D0 equals its preset; D1 and D3 differ
  in the backbone alone (their backbones decode to B2's and none of B0-B8's layers).
* ``backbone_table="official"``: D0, D1 and D3 equal the presets exactly; D2 and D4 differ in
  the BiFPN width alone (120 for 112, 216 for 224); D5-D7 differ in depth, resolution, width,
  fusion or anchors as listed above.

effdet expressibility (``fmt="effdet"``)
----------------------------------------
effdet 0.4.1 builds its backbone with ``timm.create_model(config.backbone_name,
features_only=True, **config.backbone_args)``. timm registers EfficientNets only at the
B0..B8 and L2 multipliers, and each registered function passes its own ``channel_multiplier``
and ``depth_multiplier`` to ``_gen_efficientnet`` (and builds ``block_args``/``round_chs_fn``
from them), so ``backbone_args`` cannot carry other multipliers: it fails with "got multiple
values for keyword argument". A member is therefore expressible when its backbone *decodes to the
same layers* as a registered ``tf_efficientnet_bN`` (e.g. the paper's ``beta**2``, ``alpha**2``
= (1.21, 1.44) decodes exactly to B3's layers). Everything else maps: fusion ``fastattn``/``attn``
/``sum`` to ``fpn_name`` ``bifpn_fa``/``bifpn_attn``/``bifpn_sum``, and any multiple of 8 pixels
as ``image_size`` (effdet derives feature sizes by ceil halving as we do; its outputs at 96, 160,
288 and 320 px have our shapes). A member effdet cannot express is listed with
``effdet_unsupported`` reasons instead of a broken file.

Files (written atomically, see :mod:`.output`)
---------------------------------------------
``<prefix><phi>.toml`` (or ``.json``) per member, ``<prefix><phi>.effdet.json`` with
``fmt="effdet"`` for the members effdet can express, ``family.csv``, ``family.md``,
``manifest.json``, the output marker and, for a study, ``study.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from effscale.detector.backbone import decode_backbone
from effscale.detector.complexity import COUNTING_CONVENTION
from effscale.detector.config import BackboneConfig, DetectorConfig, load_config
from effscale.detector.model import build_model
from effscale.detector.scaling import ScalingSpec

from .data import study_num_classes
from .definition import StudyDefinition
from .errors import ParameterError
from .family import Family, FamilyMember, derive_family, study_family_spec
from .markdown import markdown_table
from .output import MARKER, atomic_directory, check_output_dir
from .plots import plot_ap_vs_macs
from .space import CandidatePoint
from .storage import resolve_storage_url
from .trials import choose_trial, load_trials
from .version import effscale_version

__all__ = [
    "EXPORT_FORMATS",
    "MANIFEST_FORMAT",
    "TIMM_EFFICIENTNETS",
    "ExportResult",
    "effdet_backbone_name",
    "effdet_unsupported",
    "effdet_config",
    "load_effdet_config",
    "family_records",
    "family_markdown",
    "write_family",
    "export_study",
    "export_coefficients",
]

EXPORT_FORMATS = ("toml", "json", "effdet")
MANIFEST_FORMAT = "effscale-export-1"

#: timm's registered TF-ported EfficientNets and their (width, depth) multipliers (timm 1.0,
#: ``_gen_efficientnet``); effdet can use only these as backbones
TIMM_EFFICIENTNETS: dict[str, tuple[float, float]] = {
    "tf_efficientnet_b0": (1.0, 1.0),
    "tf_efficientnet_b1": (1.0, 1.1),
    "tf_efficientnet_b2": (1.1, 1.2),
    "tf_efficientnet_b3": (1.2, 1.4),
    "tf_efficientnet_b4": (1.4, 1.8),
    "tf_efficientnet_b5": (1.6, 2.2),
    "tf_efficientnet_b6": (1.8, 2.6),
    "tf_efficientnet_b7": (2.0, 3.1),
    "tf_efficientnet_b8": (2.2, 3.6),
    "tf_efficientnet_l2": (4.3, 5.3),
}

_EFFDET_FPN_NAMES = {"fastattn": "bifpn_fa", "attn": "bifpn_attn", "sum": "bifpn_sum"}
_EFFDET_TEMPLATE = "tf_efficientdet_d0"


# -------------------------------------------------------------------------------------- effdet


def effdet_backbone_name(backbone: BackboneConfig) -> str | None:
    """The registered timm model whose layers equal ``backbone``'s after rounding, else ``None``.

    Two multiplier pairs that decode to the same channels and repeats give the same network
    (:func:`effscale.detector.backbone.decode_backbone`), so e.g. (1.21, 1.44) is ``tf_efficientnet_b3``.
    """
    layers = decode_backbone(
        BackboneConfig(
            width_multiplier=backbone.width_multiplier, depth_multiplier=backbone.depth_multiplier
        )
    )
    for name, (width, depth) in TIMM_EFFICIENTNETS.items():
        if (
            decode_backbone(BackboneConfig(width_multiplier=width, depth_multiplier=depth))
            == layers
        ):
            return name
    return None


def effdet_unsupported(config: DetectorConfig) -> tuple[str, ...]:
    """Why effdet 0.4.1 cannot build ``config`` exactly; empty when it can."""
    reasons = []
    if effdet_backbone_name(config.backbone) is None:
        b = config.backbone
        reasons.append(
            f"backbone width {b.width_multiplier:g} x depth {b.depth_multiplier:g} matches no "
            "registered timm EfficientNet (B0-B8, L2) and backbone_args cannot set multipliers"
        )
    if config.fpn.fusion not in _EFFDET_FPN_NAMES:  # pragma: no cover - every method maps today
        reasons.append(f"fusion {config.fpn.fusion!r} has no effdet fpn_name")
    return tuple(reasons)


def effdet_config(config: DetectorConfig) -> dict[str, Any]:
    """``config`` as an effdet model config (a plain dict; ``OmegaConf.create`` it, see
    :func:`load_effdet_config`), on ``tf_efficientdet_d0``'s template (TF ``same`` padding,
    redundant biases, separable convs: the variant whose parameters equal ours).

    Raises :class:`.ParameterError` listing :func:`effdet_unsupported` reasons when effdet
    cannot express it.
    """
    reasons = effdet_unsupported(config)
    if reasons:
        raise ParameterError(
            "config", f"{config.name} cannot be expressed in effdet: {'; '.join(reasons)}"
        )
    try:
        from effdet.config import get_efficientdet_config  # effdet is optional
    except ModuleNotFoundError:
        raise ParameterError(
            "fmt", "effdet is not installed", "pip install effdet==0.4.1 or use the toml format"
        ) from None
    h = get_efficientdet_config(_EFFDET_TEMPLATE)
    h.name = config.name
    h.backbone_name = effdet_backbone_name(config.backbone)
    h.backbone_args = {"drop_path_rate": float(config.backbone.drop_path_rate)}
    h.image_size = tuple(int(v) for v in config.image_size)
    h.num_classes = config.num_classes
    h.min_level = config.min_level
    h.max_level = config.max_level
    h.num_levels = config.max_level - config.min_level + 1
    h.num_scales = config.anchors.num_scales
    h.aspect_ratios = [[float(v) for v in pair] for pair in config.anchors.aspect_ratios]
    h.anchor_scale = float(config.anchors.anchor_scale)
    h.fpn_channels = config.fpn.channels
    h.fpn_cell_repeats = config.fpn.repeats
    h.box_class_repeats = config.head.repeats
    h.fpn_name = _EFFDET_FPN_NAMES[config.fpn.fusion]
    h.url = ""  # no released weights for an exported member
    plain: dict[str, Any] = OmegaConf.to_container(h, resolve=True)  # type: ignore[assignment]
    return plain


def load_effdet_config(path: str | Path) -> Any:
    """Read a ``*.effdet.json`` file as the ``DictConfig`` that ``effdet.EfficientDet`` takes."""
    return OmegaConf.create(json.loads(Path(path).read_text()))


# -------------------------------------------------------------------------------------- tables


def family_records(family: Family) -> list[dict[str, Any]]:
    """One flat row per member: name, φ, image size (HxW pixels), backbone width/depth
    multipliers, BiFPN width (channels) and depth (cells), head depth (convs), fusion, params,
    GMACs (1e9 multiply-adds per image) and activations (conv output elements per image)."""
    rows = []
    for m in family.members:
        c = m.config
        rows.append(
            {
                "name": m.name,
                "phi": m.phi,
                "image_size": f"{c.image_size[0]}x{c.image_size[1]}",
                "backbone_width": c.backbone.width_multiplier,
                "backbone_depth": c.backbone.depth_multiplier,
                "bifpn_width": c.fpn.channels,
                "bifpn_depth": c.fpn.repeats,
                "head_depth": c.head.repeats,
                "fusion": c.fpn.fusion,
                "params": m.complexity.params,
                "gmacs": round(m.gmacs, 4),
                "activations": m.complexity.activations,
            }
        )
    return rows


_MD_HEADERS = {
    "name": "name",
    "phi": "φ",
    "image_size": "image size",
    "backbone_width": "backbone w",
    "backbone_depth": "backbone d",
    "bifpn_width": "BiFPN W",
    "bifpn_depth": "BiFPN D",
    "head_depth": "head D",
    "fusion": "fusion",
    "params": "params (M)",
    "gmacs": "GMACs",
    "activations": "activations (M)",
}


def _md_cell(key: str, value: Any) -> str:
    if key in ("params", "activations"):
        return f"{value / 1e6:.3f}"
    if key == "gmacs":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def family_markdown(family: Family, *, title: str, notes: Sequence[str] = ()) -> str:
    """``family.md``: a title, the member table (params and activations in millions, GMACs per
    image) and notes."""
    text = f"# {title}\n\n" + markdown_table(family_records(family), _MD_HEADERS, _md_cell)
    text += (
        "\nparams: learnable parameters; GMACs: 1e9 multiply-adds per image at the member's "
        "image size; activations: conv output elements per image (see manifest.json "
        "counting_convention).\n"
    )
    for note in notes:
        text += f"\n{note}\n"
    return text


def _json_dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the ``out`` folder, the ``family``, the effdet ``unsupported``
    reasons by member name (only for members effdet cannot express), the ``files`` written
    (names relative to ``out``) and the ``manifest`` as written."""

    out: Path
    family: Family
    unsupported: dict[str, tuple[str, ...]]
    files: tuple[str, ...]
    manifest: dict[str, Any] = field(repr=False)


def _verify_member(path: Path, member: FamilyMember) -> None:
    """The written file loads back to the member's config and builds (on the meta device)."""
    loaded = load_config(path)
    if loaded != member.config:  # pragma: no cover - a serialization bug, not a user error
        raise RuntimeError(f"{path.name} does not load back to the exported config")
    with torch.device("meta"):
        model = build_model(loaded)
    params = sum(p.numel() for p in model.parameters())
    if params != member.complexity.params:  # pragma: no cover - a counting bug
        raise RuntimeError(
            f"{path.name}: built model has {params} params, counted {member.complexity.params}"
        )


def write_family(
    family: Family,
    out: str | Path,
    *,
    fmt: str = "toml",
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    coefficients: dict[str, Any] | None = None,
    title: str = "Scaled EfficientDet family",
    plot: Callable[[Path], Any] | None = None,
    verify: bool = True,
    study: StudyDefinition | None = None,
) -> ExportResult:
    """Write ``family`` into ``out`` atomically (see the module docstring for the files).

    ``fmt``: ``toml`` or ``json`` native configs; ``effdet`` adds ``<name>.effdet.json`` (an
    effdet model config) next to native TOML configs for each member effdet can express.
    ``source`` and ``coefficients`` go into ``manifest.json``; ``plot(path)``, when given, draws
    ``study.png``. With ``verify`` every config is read back and built on the meta device.
    ``study``: the study exported, whose fingerprint the output marker records and whose files
    ``out`` may not hold.
    """
    if fmt not in EXPORT_FORMATS:
        raise ParameterError(
            "fmt", f"unknown value {fmt!r}", f"choose one of {', '.join(EXPORT_FORMATS)}"
        )
    suffix = ".json" if fmt == "json" else ".toml"
    unsupported = {m.name: effdet_unsupported(m.config) for m in family.members}
    unsupported = {name: reasons for name, reasons in unsupported.items() if reasons}
    with atomic_directory(out, command="export", study=study, overwrite=overwrite) as tmp:
        files: list[str] = []
        members_meta: dict[str, Any] = {}
        for m in family.members:
            path = m.config.save(tmp / f"{m.name}{suffix}")
            if verify:
                _verify_member(path, m)
            files.append(path.name)
            meta: dict[str, Any] = {
                "phi": m.phi,
                "_file": path.name,
                "num_params": m.complexity.params,
                "_ops": round(m.gmacs, 6),
                "macs": m.complexity.macs,
                "activations": m.complexity.activations,
                "min_size": list(m.config.image_size),
                "_docs": f"{m.name}: φ = {m.phi} of the exported family; _ops is GMACs "
                "(1e9 multiply-adds per image at min_size)",
            }
            if m.name in unsupported:
                meta["effdet_unsupported"] = list(unsupported[m.name])
            elif fmt == "effdet":
                effdet_path = tmp / f"{m.name}.effdet.json"
                _json_dump(effdet_path, effdet_config(m.config))
                files.append(effdet_path.name)
                meta["effdet_file"] = effdet_path.name
                meta["effdet_backbone"] = effdet_backbone_name(m.config.backbone)
            else:
                meta["effdet_backbone"] = effdet_backbone_name(m.config.backbone)
            members_meta[m.name] = meta
        pd.DataFrame.from_records(family_records(family)).to_csv(tmp / "family.csv", index=False)
        notes = []
        if fmt == "effdet" and unsupported:
            notes.append(
                "effdet cannot express these members (no .effdet.json written):\n\n"
                + "\n".join(f"* {n}: {'; '.join(r)}" for n, r in unsupported.items())
            )
        (tmp / "family.md").write_text(family_markdown(family, title=title, notes=notes))
        files += ["family.csv", "family.md"]
        if plot is not None:
            plot(tmp / "study.png")
            files.append("study.png")
        manifest = {
            "format": MANIFEST_FORMAT,
            "effscale_version": effscale_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(source or {"source": "coefficients"}),
            "coefficients": coefficients or {},
            "backbone_table": family.backbone_table,
            "spec": asdict(family.spec),
            "config_format": fmt,
            "counting_convention": COUNTING_CONVENTION,
            "units": {
                "num_params": "learnable parameters",
                "_ops": "GMACs: 1e9 multiply-adds per image at min_size",
                "macs": "multiply-adds per image",
                "activations": "conv output elements per image",
                "min_size": "pixels (height, width)",
            },
            "members": members_meta,
            "effdet_unsupported": {name: list(r) for name, r in unsupported.items()},
            "files": [*files, "manifest.json", MARKER],
        }
        _json_dump(tmp / "manifest.json", manifest)
    return ExportResult(
        out=Path(out).resolve(),
        family=family,
        unsupported=unsupported,
        files=tuple(manifest["files"]),
        manifest=manifest,
    )


def _point_dict(point: CandidatePoint) -> dict[str, Any]:
    return {
        "alpha": point.alpha,
        "beta": point.beta,
        "gamma": point.gamma,
        "width_growth": point.width_growth,
        "depth_step": point.depth_step,
        "fusion": point.fusion,
    }


def export_study(
    definition: StudyDefinition,
    *,
    out: str | Path | None = None,
    phis: Sequence[int] = tuple(range(8)),
    trial: int | None = None,
    fmt: str = "toml",
    overwrite: bool = False,
    storage: str | None = None,
    anchor: str = "base",
    prefix: str = "d",
    num_classes: int | None = None,
    plot: bool = True,
) -> ExportResult:
    """Export the family of a study's chosen trial (see :func:`.trials.choose_trial`).

    ``out`` defaults to ``<study folder>/exports/<study name>-trial<N>``; ``storage`` overrides
    the study's; ``num_classes`` defaults to :func:`.data.study_num_classes`. With ``plot`` the
    folder also gets ``study.png`` (:func:`.plots.plot_ap_vs_macs` with the family's costs).
    """
    d = definition
    if out is not None:
        check_output_dir(out, command="export", study=d, overwrite=overwrite)
    trials = load_trials(d, storage)
    chosen = choose_trial(
        trials, objectives=d.study.objectives, number=trial, study_name=f"study {d.study.name!r}"
    )
    classes = num_classes if num_classes is not None else study_num_classes(d)
    spec = study_family_spec(d.base, chosen.point, anchor=anchor)
    family = derive_family(
        spec, phis, fusion=chosen.point.fusion, num_classes=classes, prefix=prefix
    )
    if out is None:
        out = d.folder / "exports" / f"{d.study.name}-trial{chosen.number}"
    draw = None
    if plot:

        def draw(path: Path) -> Any:
            return plot_ap_vs_macs(d, trials, path=path, chosen=chosen.number, family=family)

    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    source = {
        "source": "study",
        "study": {
            "name": d.study.name,
            "storage": location.url,
            "study_file": str(d.path),
            "objectives": list(d.study.objectives),
            "selection": chosen.selection,
            "trial_ap": _finite_or_none(chosen.ap),
            "trial_macs": chosen.macs,
            "pareto": list(chosen.pareto),
            "anchor": anchor,
            "phi_proxy": d.base.phi_proxy,
        },
        "trial_number": chosen.number,
    }
    return write_family(
        family,
        out,
        fmt=fmt,
        overwrite=overwrite,
        source=source,
        coefficients=_point_dict(chosen.point),
        title=f"{d.study.name}: trial {chosen.number} scaled over φ = {phis[0]}..{phis[-1]} "
        f"(anchor: {anchor})",
        plot=draw,
        study=d,
    )


def export_coefficients(
    spec: ScalingSpec,
    *,
    out: str | Path,
    phis: Sequence[int] = tuple(range(8)),
    fusion: str = "fastattn",
    fmt: str = "toml",
    overwrite: bool = False,
    prefix: str = "d",
    num_classes: int = 90,
    backbone_table: str = "compound",
) -> ExportResult:
    """Export the family of explicit coefficients and rules (e.g. the paper's
    :data:`~effscale.detector.scaling.PAPER_SPEC`)."""
    check_output_dir(out, overwrite=overwrite, command="export")
    family = derive_family(
        spec,
        phis,
        fusion=fusion,
        num_classes=num_classes,
        prefix=prefix,
        backbone_table=backbone_table,
    )
    c = spec.coefficients
    coefficients = {
        "alpha": c.alpha,
        "beta": c.beta,
        "gamma": c.gamma,
        "width_growth": spec.bifpn.width_growth,
        "depth_step": spec.bifpn.depth_step,
        "fusion": fusion,
    }
    table = " with the official B0-B6 backbones" if backbone_table == "official" else ""
    return write_family(
        family,
        out,
        fmt=fmt,
        overwrite=overwrite,
        source={"source": "coefficients", "study": None, "trial_number": None},
        coefficients=coefficients,
        title=f"alpha {c.alpha:g}, beta {c.beta:g}, gamma {c.gamma:g}{table}: "
        f"φ = {phis[0]}..{phis[-1]}",
    )
