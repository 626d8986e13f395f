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

effdet configs (``fmt="effdet"``)
---------------------------------
effdet 0.4.1 builds its backbone with ``timm.create_model(config.backbone_name,
features_only=True, **config.backbone_args)``. timm registers EfficientNets only at the
B0..B8 and L2 multipliers, and each registered function passes its own ``channel_multiplier``
and ``depth_multiplier``, so ``backbone_args`` cannot carry other multipliers. A member whose
backbone *decodes to the same layers* as a registered ``tf_efficientnet_bN`` (e.g. the paper's
``beta**2``, ``alpha**2`` = (1.21, 1.44) decodes exactly to B3's layers) names that model, which
plain effdet builds (and whose ImageNet weights effdet can load). Every other member names
``effscale_efficientnet``, the timm model that ``import effscale.detector.timm_backbone``
registers, with its multipliers in ``backbone_args``. So every member gets a
``<name>.effdet.json``, and after that one import ``effdet.EfficientDet(config)`` builds it with
effscale's parameter count. Everything else maps: ``padding`` to ``pad_type`` (``"same"``/``""``),
fusion ``fastattn``/``attn``/``sum`` to ``fpn_name`` ``bifpn_fa``/``bifpn_attn``/``bifpn_sum``,
``min_level`` to ``backbone_indices``, and any multiple of 8 pixels as ``image_size`` (effdet
derives feature sizes by ceil halving as we do). ``effscale flops --config <name>.effdet.json``
reads one back (:func:`effscale.detector.effdet_config.load_detector_config`).

Files (written atomically, see :mod:`.output`)
---------------------------------------------
``<prefix><phi>.toml`` (or ``.json``) per member, ``<prefix><phi>.effdet.json`` with
``fmt="effdet"``, ``family.csv``, ``family.md``, ``manifest.json``, the output marker and, for a
study, ``study.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from effscale.detector.backbone import decode_backbone
from effscale.detector.complexity import COUNTING_CONVENTION, count_complexity
from effscale.detector.config import BackboneConfig, DetectorConfig, load_config
from effscale.detector.effdet_config import (
    EFFDET_FPN_NAMES,
    EFFSCALE_TIMM_BACKBONE,
    TIMM_EFFICIENTNETS,
    config_from_effdet,
    effdet_pad_type,
)
from effscale.detector.model import build_model
from effscale.detector.scaling import ScalingSpec

from .data import study_num_classes
from .definition import StudyDefinition
from .errors import ParameterError
from .family import Family, FamilyMember, derive_family, study_family_spec
from .markdown import markdown_table
from .output import MARKER, atomic_directory, check_output_dir, path_name
from .plots import plot_ap_vs_macs
from .space import CandidatePoint
from .storage import resolve_storage_url
from .trials import choose_trial, find_region, load_study, study_confirmations
from .version import effscale_version

__all__ = [
    "EXPORT_FORMATS",
    "MANIFEST_FORMAT",
    "TIMM_EFFICIENTNETS",
    "ExportResult",
    "EFFDET_IMPORT",
    "effdet_backbone_name",
    "effdet_timm_backbone",
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
#: what a user runs before ``effdet.EfficientDet`` builds a member naming effscale's backbone
EFFDET_IMPORT = "import effscale.detector.timm_backbone"

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


def effdet_timm_backbone(backbone: BackboneConfig) -> str:
    """The timm model an effdet config of ``backbone`` names: the registered
    ``tf_efficientnet_bN`` with the same layers (:func:`effdet_backbone_name`), else
    ``effscale_efficientnet`` (registered by ``import effscale.detector.timm_backbone``)."""
    return effdet_backbone_name(backbone) or EFFSCALE_TIMM_BACKBONE


def effdet_unsupported(config: DetectorConfig) -> tuple[str, ...]:
    """Why effdet 0.4.1 cannot build ``config`` exactly; empty when it can (every backbone can,
    through ``effscale_efficientnet``)."""
    reasons = []
    if config.fpn.fusion not in EFFDET_FPN_NAMES:  # pragma: no cover - every method maps today
        reasons.append(f"fusion {config.fpn.fusion!r} has no effdet fpn_name")
    return tuple(reasons)


def effdet_config(config: DetectorConfig) -> dict[str, Any]:
    """``config`` as an effdet model config (a plain dict; :func:`load_effdet_config` reads its
    file as the ``DictConfig`` effdet takes), on ``tf_efficientdet_d0``'s template (redundant biases,
    separable convs, resample BN: the variant whose parameters equal ours), with ``padding`` as
    ``pad_type``. The backbone is :func:`effdet_timm_backbone`'s; ``effscale_efficientnet``
    needs ``import effscale.detector.timm_backbone`` before effdet builds it.

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
    b = config.backbone
    h.backbone_name = effdet_timm_backbone(b)
    backbone_args: dict[str, Any] = {"drop_path_rate": float(b.drop_path_rate)}
    if h.backbone_name == EFFSCALE_TIMM_BACKBONE:
        backbone_args.update(
            width_multiplier=float(b.width_multiplier),
            depth_multiplier=float(b.depth_multiplier),
            padding=config.padding,
        )
    elif config.padding != "same":  # tf_efficientnet_bN pads "same" unless told
        backbone_args["pad_type"] = effdet_pad_type(config.padding)
    h.backbone_args = backbone_args
    if config.min_level != 3:  # effdet takes backbone features 2, 3, 4 (levels 3-5) by default
        h.backbone_indices = list(range(config.min_level - 1, 5))
    h.pad_type = effdet_pad_type(config.padding)
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
    h.fpn_name = EFFDET_FPN_NAMES[config.fpn.fusion]
    h.url = ""  # no released weights for an exported member
    plain: dict[str, Any] = _plain(h)
    return plain


def _plain(value: Any) -> Any:
    """An OmegaConf ``DictConfig``/``ListConfig`` (a mapping/sequence) as dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def load_effdet_config(path: str | Path) -> Any:
    """Read a ``*.effdet.json`` file as the ``DictConfig`` that ``effdet.EfficientDet`` takes
    (effdet's defaults updated by the file, as ``effdet.get_efficientdet_config`` makes one)."""
    try:
        from effdet.config import default_detection_model_configs  # effdet is optional
    except ModuleNotFoundError:
        raise ParameterError(
            "path", "effdet is not installed", "pip install effdet==0.4.1"
        ) from None
    data = json.loads(Path(path).read_text())
    if isinstance(data.get("image_size"), list):  # effdet declares a tuple
        data["image_size"] = tuple(data["image_size"])
    h = default_detection_model_configs()
    h.update(data)
    return h


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


def _verify_effdet_member(path: Path, member: FamilyMember) -> None:
    """The written effdet config reads back (:func:`config_from_effdet`) to a network with the
    member's parameters and MACs."""
    loaded = config_from_effdet(json.loads(path.read_text()))
    if count_complexity(loaded) != member.complexity:  # pragma: no cover - a mapping bug
        raise RuntimeError(f"{path.name} does not read back to the exported network")


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
    effdet model config, see :func:`effdet_config`) next to native TOML configs for each member.
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
            if m.name in unsupported:  # pragma: no cover - every member is expressible today
                meta["effdet_unsupported"] = list(unsupported[m.name])
            elif fmt == "effdet":
                effdet_path = tmp / f"{m.name}.effdet.json"
                _json_dump(effdet_path, effdet_config(m.config))
                if verify:
                    _verify_effdet_member(effdet_path, m)
                files.append(effdet_path.name)
                meta["effdet_file"] = effdet_path.name
                meta["effdet_backbone"] = effdet_timm_backbone(m.config.backbone)
            else:
                meta["effdet_backbone"] = effdet_timm_backbone(m.config.backbone)
            members_meta[m.name] = meta
        pd.DataFrame.from_records(family_records(family)).to_csv(tmp / "family.csv", index=False)
        notes = []
        if fmt == "effdet" and any(
            meta.get("effdet_backbone") == EFFSCALE_TIMM_BACKBONE for meta in members_meta.values()
        ):
            notes.append(
                f"In effdet, run `{EFFDET_IMPORT}` before `effdet.EfficientDet(config)`: it "
                f"registers {EFFSCALE_TIMM_BACKBONE}, the timm backbone of the members whose "
                "multipliers no registered EfficientNet has."
            )
        if fmt == "effdet" and unsupported:  # pragma: no cover - every member is expressible
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
    phis: Sequence[int] | None = None,
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

    ``out`` defaults to ``<study folder>/exports/<study name>-trial<N>`` (the name made a safe
    file name, :func:`.output.path_name`); ``storage`` overrides
    the study's; ``num_classes`` defaults to :func:`.data.study_num_classes`. With ``plot`` the
    folder also gets ``study.png`` (:func:`.plots.plot_ap_vs_macs` with the family's costs).
    ``phis`` defaults to 0..7 up to the last legal member (a large α can make D7's backbone
    deeper than a legal detector; :attr:`.family.Family.left_out` says which and why); a range
    that is given must be legal throughout.
    """
    d = definition
    if out is not None:
        check_output_dir(out, command="export", study=d, overwrite=overwrite)
    study = load_study(d, storage)
    trials = study.get_trials(deepcopy=False)
    region = find_region(trials, confirmations=study_confirmations(study))
    chosen = choose_trial(
        trials, objectives=d.study.objectives, number=trial, study_name=f"study {d.study.name!r}"
    )
    classes = num_classes if num_classes is not None else study_num_classes(d)
    spec = study_family_spec(d.base, chosen.point, anchor=anchor)
    family = derive_family(
        spec,
        tuple(range(8)) if phis is None else phis,
        fusion=chosen.point.fusion,
        num_classes=classes,
        prefix=prefix,
        up_to_legal=phis is None,
    )
    first, last = family.members[0].phi, family.members[-1].phi
    if out is None:
        out = d.folder / "exports" / f"{path_name(d.study.name)}-trial{chosen.number}"
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
        # members of the default range 0-7 that are not legal detectors, and why
        **({"left_out": dict(family.left_out)} if family.left_out else {}),
        # the answer with its noise (see effscale status): the exported trial is one point of it
        **region.to_dict(),
    }
    return write_family(
        family,
        out,
        fmt=fmt,
        overwrite=overwrite,
        source=source,
        coefficients=_point_dict(chosen.point),
        title=f"{d.study.name}: trial {chosen.number} scaled over φ = {first}..{last} "
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
