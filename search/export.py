"""Export a scaled detector family: the coefficients of a study trial (or given ones) applied at
φ = 0..7, one legal config per member, tables of their cost and a manifest.

Where the coefficients come from
--------------------------------
* A study (:func:`export_study`): by default the best feasible COMPLETE trial; with two objectives
  (AP, MACs) the highest-AP trial of the Pareto front, or a named Pareto trial. The trial's params
  and user attrs give ``alpha``, ``beta``, ``gamma`` (a user attr when derived in solve mode),
  ``width_growth``, ``depth_step`` and ``fusion`` (:func:`search.objective.trial_coordinates`).
* Explicit coefficients (:func:`export_coefficients`): any :class:`~detector.scaling.ScalingSpec`,
  e.g. the paper's :data:`~detector.scaling.PAPER_SPEC`, optionally with the official B0..B6
  backbones per φ (``backbone_table="official"``).

What a study family grows from (``anchor``)
-------------------------------------------
* ``"base"`` (default): φ=0 is the study's ``[base]`` itself (for ``preset = "d0"``: D0 at 512 px);
  φ grows it by the trial's coefficients: backbone width ``beta**phi`` and depth ``alpha**phi``,
  resolution ``resolution_base * gamma**phi``, BiFPN ``W = W0 * width_growth**phi`` and
  ``D = D0 + depth_step * phi``, heads ``+1`` conv every ``head_depth_period``.
* ``"proxy"``: φ=0 is the search's proxy (the base at ``phi_proxy``), exactly as in the search,
  so the member at φ=1 is the trial's trained model (:func:`search.objective.family_spec`).

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
/``sum`` to ``fpn_name`` ``bifpn_fa``/``bifpn_attn``/``bifpn_sum``, and any multiple of 32 pixels
as ``image_size`` (effdet derives feature sizes by ceil halving as we do; its outputs at 96, 160,
288 and 320 px have our shapes). A member effdet cannot express is listed with
``effdet_unsupported`` reasons instead of a broken file.

Files (written atomically: into a temporary sibling folder, then renamed)
-------------------------------------------------------------------------
``<prefix><phi>.toml`` (or ``.json``) per member, ``<prefix><phi>.effdet.json`` with
``fmt="effdet"`` for the members effdet can express, ``family.csv``, ``family.md``,
``manifest.json`` and, for a study, ``study.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from detector.complexity import COUNTING_CONVENTION, Complexity, count_complexity
from detector.config import (
    PRESETS,
    BackboneConfig,
    DetectorConfig,
    from_scaling,
    load_config,
)
from detector.scaling import (
    PHI_RANGE,
    BifpnRule,
    CompoundCoefficients,
    ResolutionRule,
    ScalingSpec,
)
from search.space import CandidatePoint

__all__ = [
    "EXPORT_FORMATS",
    "ANCHORS",
    "BACKBONE_TABLES",
    "OFFICIAL_BACKBONES",
    "TIMM_EFFICIENTNETS",
    "ChosenTrial",
    "is_feasible_trial",
    "trial_point",
    "FamilyMember",
    "Family",
    "ExportResult",
    "parse_phi_range",
    "choose_trial",
    "study_family_spec",
    "study_num_classes",
    "derive_family",
    "effdet_backbone_name",
    "effdet_unsupported",
    "effdet_config",
    "load_effdet_config",
    "family_records",
    "markdown_table",
    "family_markdown",
    "check_output_dir",
    "atomic_directory",
    "write_family",
    "export_study",
    "export_coefficients",
]

EXPORT_FORMATS = ("toml", "json", "effdet")
ANCHORS = ("base", "proxy")
BACKBONE_TABLES = ("compound", "official")
MANIFEST_FORMAT = "effscale-export-1"

#: the backbone (width, depth) multipliers of the released EfficientDet D0..D7 (D7 reuses B6)
OFFICIAL_BACKBONES: dict[int, tuple[float, float]] = {
    int(name[1:]): (c.backbone.width_multiplier, c.backbone.depth_multiplier)
    for name, c in PRESETS.items()
}

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


# ------------------------------------------------------------------------------- φ and trials


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
        raise ValueError(f"--phi: expected N or LOW-HIGH with integers, got {raw!r}; write e.g. "
                         "0-7 or 3") from None
    top = int(PHI_RANGE[1])
    if low > high:
        raise ValueError(f"--phi: range {raw} has no members (LOW > HIGH); write LOW-HIGH with "
                         "LOW <= HIGH, e.g. 0-7")
    if low < 0 or high > top:
        raise ValueError(f"--phi: {raw} leaves [0, {top}]; exported members are φ = 0..{top}, "
                         "e.g. 0-7")
    return tuple(range(low, high + 1))


@dataclass(frozen=True)
class ChosenTrial:
    """The trial an export or validation uses: its ``number``, coefficients (``point``), AP at
    φ=1, the φ=1 model's MACs (multiply-adds per image; ``None`` if not recorded), how it was
    chosen (``"best"``, ``"pareto-best"`` or ``"named"``) and the Pareto front's trial numbers
    (two objectives only, else empty)."""

    number: int
    point: CandidatePoint
    ap: float
    macs: int | None
    selection: str
    pareto: tuple[int, ...] = ()


def is_feasible_trial(trial: Any) -> bool:
    """Whether a trial met the cost constraint: its constraint values are <= 0 and it is not
    marked ``feasible = False`` (a point outside the band, pruned before training)."""
    from search.runners.optuna_runner import is_feasible

    return is_feasible(trial) and trial.user_attrs.get("feasible", True) is not False


def trial_point(trial: Any) -> CandidatePoint:
    """A finished trial's coefficients (sampled params, derived or fixed user attrs) as a
    :class:`~search.space.CandidatePoint`; a one-line ``ValueError`` if one is unrecorded."""
    from search.objective import trial_coordinates

    coords = trial_coordinates(trial)
    missing = [name for name, value in coords.items() if value is None]
    if missing:
        raise ValueError(f"--trial: trial {trial.number} records no {missing[0]} (neither a param "
                         "nor a user attr); it was not made by effscale search")
    return CandidatePoint(**coords)


def choose_trial(trials: Sequence[Any], *, objectives: Sequence[str],
                 number: int | None = None, study_name: str = "the study") -> ChosenTrial:
    """Pick the trial to export from a study's ``trials`` (Optuna ``FrozenTrial`` objects).

    ``number`` ``None``: the feasible COMPLETE trial with the highest AP (for two objectives,
    the highest-AP trial of the Pareto front). A named trial must exist, be COMPLETE and
    feasible, and with two objectives lie on the Pareto front. Raises a one-line ``ValueError``.
    """
    from search.runners.optuna_runner import best_trial, pareto_front

    two = len(objectives) == 2
    front = tuple(t.number for t in pareto_front(trials)) if two else ()
    if number is None:
        if two:
            chosen = max((t for t in trials if t.number in front),
                         key=lambda t: (t.values[0], -t.number), default=None)
        else:
            chosen = best_trial(trials)
        if chosen is None:
            finished = sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
            raise ValueError(f"--best: {study_name} has no feasible COMPLETE trial yet "
                             f"({len(trials)} trials, {finished} finished); run effscale search "
                             "until one completes, or export given coefficients with --alpha "
                             "--beta --gamma")
        selection = "pareto-best" if two else "best"
    else:
        by_number = {t.number: t for t in trials}
        if number not in by_number:
            span = f"trials 0-{max(by_number)}" if by_number else "no trials"
            raise ValueError(f"--trial: {study_name} has no trial {number} ({span}); pick one "
                             "from effscale status, or drop --trial for the best")
        chosen = by_number[number]
        if chosen.user_attrs.get("feasible") is False or (
                chosen.state.name == "COMPLETE" and not is_feasible_trial(chosen)):
            reason = chosen.user_attrs.get("infeasible_reason")
            ratio = chosen.user_attrs.get("cost_ratio")
            detail = (f" ({' '.join(str(reason).split())})" if reason else
                      f" (cost ratio {ratio:.4f})" if isinstance(ratio, (int, float)) else "")
            raise ValueError(f"--trial: trial {number} is infeasible{detail}: it misses the cost "
                             "band and was never trained; export a feasible trial, or drop "
                             "--trial for the best")
        if chosen.state.name != "COMPLETE":
            why = (chosen.user_attrs.get("infeasible_reason") or chosen.user_attrs.get("error")
                   or chosen.user_attrs.get("skip_reason") or "")
            raise ValueError(f"--trial: trial {number} is {chosen.state.name}, not COMPLETE"
                             f"{' (' + ' '.join(str(why).split()) + ')' if why else ''}; export a "
                             "COMPLETE trial, or drop --trial for the best")
        if two and number not in front:
            raise ValueError(f"--trial: trial {number} is not on the Pareto front (trials "
                             f"{', '.join(map(str, front)) or 'none'}); name one of those")
        selection = "named"
    ap = float(chosen.values[0])
    macs = chosen.user_attrs.get("macs")
    return ChosenTrial(number=chosen.number, point=trial_point(chosen), ap=ap,
                       macs=None if macs is None else int(macs), selection=selection,
                       pareto=front)


# ----------------------------------------------------------------------------------- families


def study_family_spec(base: Any, point: CandidatePoint, *, anchor: str = "base") -> ScalingSpec:
    """The scaling spec of a study's family for ``point``.

    ``anchor="proxy"``: φ=0 is the search's proxy (:func:`search.objective.family_spec`).
    ``anchor="base"``: φ=0 is ``base`` itself (its backbone multipliers, BiFPN and heads at
    ``resolution_base`` pixels), grown by the point's coefficients (compound resolution rule).
    """
    from search.objective import family_spec

    if anchor not in ANCHORS:
        raise ValueError(f"--anchor: unknown value {anchor!r}; choose one of {', '.join(ANCHORS)}")
    if anchor == "proxy":
        return family_spec(base, point)
    return ScalingSpec(
        coefficients=CompoundCoefficients(alpha=point.alpha, beta=point.beta, gamma=point.gamma),
        bifpn=BifpnRule(
            width_base=float(base.bifpn.width_base), width_growth=point.width_growth,
            depth_base=float(base.bifpn.depth_base), depth_step=point.depth_step,
            head_depth_base=base.bifpn.head_depth_base,
            head_depth_period=base.bifpn.head_depth_period,
        ),
        resolution=ResolutionRule(kind="compound", base=float(base.resolution_base), step=0.0),
        backbone_width=base.backbone_width,
        backbone_depth=base.backbone_depth,
    )


def study_num_classes(definition: Any) -> int:
    """The classes a study's models are built for, without touching its data: ``[base]
    num_classes``, else the generated data's classes, else the categories listed in
    ``DIR/train/instances.json``, else 90 (COCO)."""
    d = definition
    if d.base.num_classes is not None:
        return int(d.base.num_classes)
    if d.data is not None and d.data.generate is not None:
        return int(d.data.generate.num_classes)
    if d.data is not None and d.data.dir is not None:
        from detector.data.coco import split_paths

        _, annotations = split_paths(d.data.dir, "train")
        categories = json.loads(annotations.read_text()).get("categories") or []
        if categories:
            return len(categories)
        raise ValueError(f"data.dir: {annotations} lists no categories; give [base] num_classes "
                         "or --num-classes")
    return 90


@dataclass(frozen=True)
class FamilyMember:
    """One exported detector: ``name`` (``<prefix><phi>``), ``phi``, its ``config`` and its
    measured ``complexity`` (params; MACs and activations per image)."""

    name: str
    phi: int
    config: DetectorConfig
    complexity: Complexity

    @property
    def gmacs(self) -> float:
        """Multiply-adds per image, in billions."""
        return self.complexity.macs / 1e9


@dataclass(frozen=True)
class Family:
    """A derived family: its members by φ, the ``spec`` they come from, the fusion method and
    the backbone rule (``"compound"``: ``beta**phi``/``alpha**phi``; ``"official"``: B0..B6)."""

    members: tuple[FamilyMember, ...]
    spec: ScalingSpec
    fusion: str
    backbone_table: str = "compound"


def _official_backbone(phi: int) -> BackboneConfig:
    if phi not in OFFICIAL_BACKBONES:
        raise ValueError(f"--backbone-table: the official table covers φ = 0..7 (B0..B6), got φ "
                         f"= {phi}; use --phi within 0-7 or --backbone-table compound")
    width, depth = OFFICIAL_BACKBONES[phi]
    return BackboneConfig(width_multiplier=width, depth_multiplier=depth)


def derive_family(spec: ScalingSpec, phis: Sequence[int], *, fusion: str = "fastattn",
                  num_classes: int = 90, prefix: str = "d",
                  backbone_table: str = "compound") -> Family:
    """Apply ``spec`` at every φ of ``phis`` with legal rounding (:func:`from_scaling`) and
    measure each member (:func:`count_complexity`).

    ``backbone_table="official"`` replaces the backbone by the released EfficientDet's B0..B6 at
    each φ (integer φ in 0..7). A member that cannot be built legally raises a one-line
    ``ValueError`` naming its φ.
    """
    if backbone_table not in BACKBONE_TABLES:
        raise ValueError(f"--backbone-table: unknown value {backbone_table!r}; choose one of "
                         f"{', '.join(BACKBONE_TABLES)}")
    if not phis:
        raise ValueError("--phi: the range has no members; write e.g. 0-7")
    if not isinstance(prefix, str) or not prefix.strip() or any(c in prefix for c in "/\\ "):
        raise ValueError(f"--prefix: {prefix!r} cannot start a file name; use e.g. d")
    members = []
    for phi in phis:
        name = f"{prefix}{phi}"
        try:
            config = from_scaling(spec, phi, num_classes=num_classes, fusion=fusion, name=name)
            if backbone_table == "official":
                config = config.replace(backbone=_official_backbone(phi))
        except ValueError as exc:
            if str(exc).startswith("--"):
                raise
            fix = (f"use --phi {phis[0]}-{phi - 1}" if phi > phis[0] else
                   "lower the φ range") + " or smaller coefficients"
            raise ValueError(f"--phi: member {name} (φ = {phi}) is not a legal detector "
                             f"({' '.join(str(exc).split())}); {fix}") from None
        members.append(FamilyMember(name=name, phi=phi, config=config,
                                    complexity=count_complexity(config)))
    return Family(members=tuple(members), spec=spec, fusion=fusion,
                  backbone_table=backbone_table)


# -------------------------------------------------------------------------------------- effdet


def effdet_backbone_name(backbone: BackboneConfig) -> str | None:
    """The registered timm model whose layers equal ``backbone``'s after rounding, else ``None``.

    Two multiplier pairs that decode to the same channels and repeats give the same network
    (:func:`detector.backbone.decode_backbone`), so e.g. (1.21, 1.44) is ``tf_efficientnet_b3``.
    """
    from detector.backbone import decode_backbone

    layers = decode_backbone(BackboneConfig(width_multiplier=backbone.width_multiplier,
                                            depth_multiplier=backbone.depth_multiplier))
    for name, (width, depth) in TIMM_EFFICIENTNETS.items():
        if decode_backbone(BackboneConfig(width_multiplier=width,
                                          depth_multiplier=depth)) == layers:
            return name
    return None


def effdet_unsupported(config: DetectorConfig) -> tuple[str, ...]:
    """Why effdet 0.4.1 cannot build ``config`` exactly; empty when it can."""
    reasons = []
    if effdet_backbone_name(config.backbone) is None:
        b = config.backbone
        reasons.append(
            f"backbone width {b.width_multiplier:g} x depth {b.depth_multiplier:g} matches no "
            "registered timm EfficientNet (B0-B8, L2) and backbone_args cannot set multipliers")
    if config.fpn.fusion not in _EFFDET_FPN_NAMES:  # pragma: no cover - every method maps today
        reasons.append(f"fusion {config.fpn.fusion!r} has no effdet fpn_name")
    return tuple(reasons)


def effdet_config(config: DetectorConfig) -> dict[str, Any]:
    """``config`` as an effdet model config (a plain dict; ``OmegaConf.create`` it, see
    :func:`load_effdet_config`), on ``tf_efficientdet_d0``'s template (TF ``same`` padding,
    redundant biases, separable convs: the variant whose parameters equal ours).

    Raises ``ValueError`` listing :func:`effdet_unsupported` reasons when effdet cannot express it.
    """
    reasons = effdet_unsupported(config)
    if reasons:
        raise ValueError(f"effdet: {config.name} cannot be expressed: {'; '.join(reasons)}")
    try:
        from effdet.config import get_efficientdet_config
        from omegaconf import OmegaConf
    except ModuleNotFoundError:
        raise ValueError("--format effdet: effdet is not installed; pip install effdet==0.4.1 "
                         "or use --format toml") from None
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
    return OmegaConf.to_container(h, resolve=True)


def load_effdet_config(path: str | Path) -> Any:
    """Read a ``*.effdet.json`` file as the ``DictConfig`` that ``effdet.EfficientDet`` takes."""
    from omegaconf import OmegaConf

    return OmegaConf.create(json.loads(Path(path).read_text()))


# -------------------------------------------------------------------------------------- tables


def family_records(family: Family) -> list[dict[str, Any]]:
    """One flat row per member: name, φ, image size (HxW pixels), backbone width/depth
    multipliers, BiFPN width (channels) and depth (cells), head depth (convs), fusion, params,
    GMACs (1e9 multiply-adds per image) and activations (conv output elements per image)."""
    rows = []
    for m in family.members:
        c = m.config
        rows.append({
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
        })
    return rows


_MD_HEADERS = {
    "name": "name", "phi": "φ", "image_size": "image size", "backbone_width": "backbone w",
    "backbone_depth": "backbone d", "bifpn_width": "BiFPN W", "bifpn_depth": "BiFPN D",
    "head_depth": "head D", "fusion": "fusion", "params": "params (M)", "gmacs": "GMACs",
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


def markdown_table(rows: Sequence[dict[str, Any]], headers: dict[str, str] | None = None,
                   cell: Any = None) -> str:
    """A GitHub Markdown table of ``rows`` (columns in the first row's order)."""
    if not rows:
        return ""
    keys = list(rows[0])
    headers = headers or {}
    cell = cell or (lambda _k, v: "" if v is None else (f"{v:.4g}" if isinstance(v, float)
                                                        else str(v)))
    numeric = [all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                   for r in rows) for k in keys]
    lines = ["| " + " | ".join(headers.get(k, k) for k in keys) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(k, row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def family_markdown(family: Family, *, title: str, notes: Sequence[str] = ()) -> str:
    """``family.md``: a title, the member table (params and activations in millions, GMACs per
    image) and notes."""
    text = f"# {title}\n\n" + markdown_table(family_records(family), _MD_HEADERS, _md_cell)
    text += ("\nparams: learnable parameters; GMACs: 1e9 multiply-adds per image at the member's "
             "image size; activations: conv output elements per image (see manifest.json "
             "counting_convention).\n")
    for note in notes:
        text += f"\n{note}\n"
    return text


# ---------------------------------------------------------------------------- atomic output


def check_output_dir(out: str | Path, *, overwrite: bool, marker: str = "manifest.json",
                     flag: str = "--out") -> Path:
    """Refuse ``out`` when it is a file, or a non-empty folder without ``overwrite``; with
    ``overwrite``, a non-empty folder must hold ``marker`` (it is an earlier output of ours), so
    that an unrelated folder is never replaced. Returns the absolute path."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag}: {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{flag}: {out} exists and is not empty; pass --overwrite to "
                             "replace it or choose another folder")
        if not (out / marker).is_file():
            raise ValueError(f"{flag}: {out} holds no {marker}, so it is not an earlier effscale "
                             "output; --overwrite replaces only those, choose another folder")
    if out.parent == out:
        raise ValueError(f"{flag}: {out} is a file-system root; give a folder below it")
    return out


@contextlib.contextmanager
def atomic_directory(out: str | Path, *, overwrite: bool = False, marker: str = "manifest.json",
                     flag: str = "--out") -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``out``; on success it replaces ``out`` by rename.

    On any error the temporary folder is removed and ``out`` is left as it was, so a reader never
    sees a half-written export. A non-empty ``out`` is refused unless ``overwrite`` and it holds
    ``marker`` (see :func:`check_output_dir`).
    """
    out = check_output_dir(out, overwrite=overwrite, marker=marker, flag=flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        check_output_dir(out, overwrite=overwrite, marker=marker, flag=flag)  # appeared since?
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    import torch

    from detector.model import build_model

    loaded = load_config(path)
    if loaded != member.config:  # pragma: no cover - a serialization bug, not a user error
        raise RuntimeError(f"{path.name} does not load back to the exported config")
    with torch.device("meta"):
        model = build_model(loaded)
    params = sum(p.numel() for p in model.parameters())
    if params != member.complexity.params:  # pragma: no cover - a counting bug
        raise RuntimeError(f"{path.name}: built model has {params} params, counted "
                           f"{member.complexity.params}")


def write_family(family: Family, out: str | Path, *, fmt: str = "toml", overwrite: bool = False,
                 source: dict[str, Any] | None = None, coefficients: dict[str, Any] | None = None,
                 title: str = "Scaled EfficientDet family", plot: Any = None,
                 verify: bool = True) -> ExportResult:
    """Write ``family`` into ``out`` atomically (see the module docstring for the files).

    ``fmt``: ``toml`` or ``json`` native configs; ``effdet`` adds ``<name>.effdet.json`` (an
    effdet model config) next to native TOML configs for each member effdet can express.
    ``source`` and ``coefficients`` go into ``manifest.json``; ``plot(path)``, when given, draws
    ``study.png``. With ``verify`` every config is read back and built on the meta device.
    """
    from search.runners.optuna_runner import effscale_version

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format: unknown value {fmt!r}; choose one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    suffix = ".json" if fmt == "json" else ".toml"
    unsupported = {m.name: effdet_unsupported(m.config) for m in family.members}
    unsupported = {name: reasons for name, reasons in unsupported.items() if reasons}
    with atomic_directory(out, overwrite=overwrite) as tmp:
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
        import pandas as pd

        pd.DataFrame.from_records(family_records(family)).to_csv(tmp / "family.csv", index=False)
        notes = []
        if fmt == "effdet" and unsupported:
            notes.append("effdet cannot express these members (no .effdet.json written):\n\n"
                         + "\n".join(f"* {n}: {'; '.join(r)}" for n, r in unsupported.items()))
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
            "units": {"num_params": "learnable parameters",
                      "_ops": "GMACs: 1e9 multiply-adds per image at min_size",
                      "macs": "multiply-adds per image", "activations":
                      "conv output elements per image", "min_size": "pixels (height, width)"},
            "members": members_meta,
            "effdet_unsupported": {name: list(r) for name, r in unsupported.items()},
            "files": files + ["manifest.json"],
        }
        _json_dump(tmp / "manifest.json", manifest)
    return ExportResult(out=Path(out).resolve(), family=family, unsupported=unsupported,
                        files=tuple(manifest["files"]), manifest=manifest)


def _point_dict(point: CandidatePoint) -> dict[str, Any]:
    return {"alpha": point.alpha, "beta": point.beta, "gamma": point.gamma,
            "width_growth": point.width_growth, "depth_step": point.depth_step,
            "fusion": point.fusion}


def export_study(definition: Any, *, out: str | Path | None = None,
                 phis: Sequence[int] = tuple(range(8)), trial: int | None = None,
                 fmt: str = "toml", overwrite: bool = False, storage: str | None = None,
                 anchor: str = "base", prefix: str = "d", num_classes: int | None = None,
                 plot: bool = True) -> ExportResult:
    """Export the family of a study's chosen trial (see :func:`choose_trial`).

    ``out`` defaults to ``<study folder>/exports/<study name>-trial<N>``; ``storage`` overrides
    the study's; ``num_classes`` defaults to :func:`study_num_classes`. With ``plot`` the folder
    also gets ``study.png`` (:func:`search.plots.plot_study`).
    """
    from search.commands.status import load_trials
    from search.storage import resolve_storage_url

    d = definition
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    trials = load_trials(d, storage)
    chosen = choose_trial(trials, objectives=d.study.objectives, number=trial,
                          study_name=f"study {d.study.name!r}")
    classes = num_classes if num_classes is not None else study_num_classes(d)
    spec = study_family_spec(d.base, chosen.point, anchor=anchor)
    family = derive_family(spec, phis, fusion=chosen.point.fusion, num_classes=classes,
                           prefix=prefix)
    if out is None:
        out = d.folder / "exports" / f"{d.study.name}-trial{chosen.number}"
    draw = None
    if plot:
        from search.plots import plot_study, study_plot_data

        data = study_plot_data(d, trials, chosen=chosen, family=family, num_classes=classes)
        draw = lambda path: plot_study(path, data)  # noqa: E731
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
    return write_family(family, out, fmt=fmt, overwrite=overwrite, source=source,
                        coefficients=_point_dict(chosen.point),
                        title=f"{d.study.name}: trial {chosen.number} scaled over φ = "
                              f"{phis[0]}..{phis[-1]} (anchor: {anchor})",
                        plot=draw)


def export_coefficients(spec: ScalingSpec, *, out: str | Path, phis: Sequence[int] = tuple(
                        range(8)), fusion: str = "fastattn", fmt: str = "toml",
                        overwrite: bool = False, prefix: str = "d", num_classes: int = 90,
                        backbone_table: str = "compound") -> ExportResult:
    """Export the family of explicit coefficients and rules (e.g. :data:`PAPER_SPEC`)."""
    check_output_dir(out, overwrite=overwrite)
    family = derive_family(spec, phis, fusion=fusion, num_classes=num_classes, prefix=prefix,
                           backbone_table=backbone_table)
    c = spec.coefficients
    coefficients = {"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma,
                    "width_growth": spec.bifpn.width_growth, "depth_step": spec.bifpn.depth_step,
                    "fusion": fusion}
    table = " with the official B0-B6 backbones" if backbone_table == "official" else ""
    return write_family(family, out, fmt=fmt, overwrite=overwrite,
                        source={"source": "coefficients", "study": None, "trial_number": None},
                        coefficients=coefficients,
                        title=f"alpha {c.alpha:g}, beta {c.beta:g}, gamma {c.gamma:g}{table}: "
                              f"φ = {phis[0]}..{phis[-1]}")
