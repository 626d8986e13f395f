"""effdet 0.4.1 state dicts by name: effdet's parameter and buffer names for effscale's, both ways.

The two implementations hold the same tensors under different names (effscale's ``fpn.cells.R.
nodes.I.input_convs.J`` is effdet's ``fpn.cell.R.fnode.I.combine.resample.<offset>``, its
``fpn.extra`` is effdet's ``fpn.resample.<level>``, and so on). The head BatchNorms differ in
order too: effscale stores them level-first (``class_head.bns.<level>.<repeat>``), effdet
repeat-first (``class_net.bn_rep.<repeat>.<level>.bn``, unless ``head_bn_level_first``), so
loading by parameter order would pair each level's statistics with another's. Names are mapped
from the structure of the config (:func:`effdet_names`), every tensor is checked for shape, and
nothing is left over on either side.

With the same padding (``"same"`` for effdet's ``tf_`` models), effdet's weights mapped here give
effscale's model the same class and box outputs (tests/detector_tests/test_effdet_weights.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import timm_backbone  # noqa: F401 - registers effscale_efficientnet with timm
from .config import DetectorConfig
from .effdet_config import config_from_effdet
from .fpn_graph import bifpn_graph
from .model import EfficientDet, build_model
from .train import CHECKPOINT_NAME, save_checkpoint

__all__ = [
    "effdet_names",
    "effscale_state_from_effdet",
    "effdet_state_from_effscale",
    "load_effdet_state_dict",
    "read_effdet_checkpoint",
    "resolve_effdet_config",
    "import_effdet",
    "write_imported",
    "effdet_output_difference",
]

_HEADS = {"class_head": "class_net", "box_head": "box_net"}
_CONV = {
    "depthwise.weight": "conv_dw.weight",
    "pointwise.weight": "conv_pw.weight",
    "pointwise.bias": "conv_pw.bias",
}


def _effdet_name(key: str, config: DetectorConfig, head_bn_level_first: bool) -> str:
    """effdet's name for effscale's state-dict ``key``."""
    graph = bifpn_graph(config.min_level, config.max_level)
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body.") :]
    if m := re.fullmatch(r"fpn\.extra\.conv\.(conv|bn)\.(.+)", key):
        first_extra = 6 - config.min_level  # levels min_level..5 come from the backbone
        return f"fpn.resample.{first_extra}.conv.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"fpn\.cells\.(\d+)\.nodes\.(\d+)\.(.+)", key):
        cell, node, rest = m[1], int(m[2]), m[3]
        prefix = f"fpn.cell.{cell}.fnode.{node}"
        if rest == "weight":
            return f"{prefix}.combine.edge_weights"
        if n := re.fullmatch(r"input_convs\.(\d+)\.(conv|bn)\.(.+)", rest):
            offset = graph.nodes[node].inputs[int(n[1])]
            return f"{prefix}.combine.resample.{offset}.conv.{n[2]}.{n[3]}"
        if rest.startswith("conv.") and rest[5:] in _CONV:
            return f"{prefix}.after_combine.conv.{_CONV[rest[5:]]}"
        if rest.startswith("bn."):
            return f"{prefix}.after_combine.conv.{rest}"
    if m := re.fullmatch(r"(class_head|box_head)\.(.+)", key):
        net, rest = _HEADS[m[1]], m[2]
        if n := re.fullmatch(r"convs\.(\d+)\.(.+)", rest):
            if n[2] in _CONV:
                return f"{net}.conv_rep.{n[1]}.{_CONV[n[2]]}"
        if n := re.fullmatch(r"bns\.(\d+)\.(\d+)\.(.+)", rest):
            level, repeat, tensor = n[1], n[2], n[3]
            if head_bn_level_first:
                return f"{net}.bn_rep.{level}.{repeat}.{tensor}"
            return f"{net}.bn_rep.{repeat}.{level}.bn.{tensor}"
        if rest.startswith("predict.") and rest[8:] in _CONV:
            return f"{net}.predict.{_CONV[rest[8:]]}"
    raise RuntimeError(f"effscale state-dict key {key!r} has no effdet name")  # a model change


def _shapes(config: DetectorConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = build_model(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def effdet_names(config: DetectorConfig, *, head_bn_level_first: bool = False) -> dict[str, str]:
    """effscale state-dict key -> effdet 0.4.1 key, for every parameter and buffer of
    ``build_model(config)`` (a bijection). ``head_bn_level_first`` is effdet's config key of the
    same name (``False`` for its released models)."""
    return {key: _effdet_name(key, config, head_bn_level_first) for key in _shapes(config)}


def _check_keys(
    theirs: Mapping[str, torch.Tensor], wanted: Mapping[str, torch.Size], what: str
) -> None:
    missing = [k for k in wanted if k not in theirs]
    unexpected = [k for k in theirs if k not in wanted]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise ValueError(
            f"checkpoint: {what} does not fit the config: {', '.join(parts)}; give the config "
            "(effdet model name or effdet config) the checkpoint was trained with"
        )
    for key, shape in wanted.items():
        if tuple(theirs[key].shape) != tuple(shape):
            raise ValueError(
                f"checkpoint: {key} has shape {tuple(theirs[key].shape)} in {what} but "
                f"{tuple(shape)} in the config; give the config the checkpoint was trained with "
                "(num_classes, fpn_channels, ...)"
            )


def _level_first(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether effdet's head BatchNorms are stored level-first (no ``.bn.`` container)."""
    return not any(re.search(r"_net\.bn_rep\.\d+\.\d+\.bn\.", k) for k in state) and any(
        "_net.bn_rep." in k for k in state
    )


def effscale_state_from_effdet(
    config: DetectorConfig, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """effdet's state dict ``state`` (of ``effdet.EfficientDet`` for the effdet config that
    ``config`` came from) under effscale's names, for ``build_model(config).load_state_dict``.

    The head BN order (repeat- or level-first) is read from the names. Raises ``ValueError``
    (``checkpoint: ...``) when a tensor is missing, left over or of another shape.
    """
    names = effdet_names(config, head_bn_level_first=_level_first(state))
    shapes = _shapes(config)
    _check_keys(state, {names[k]: shapes[k] for k in names}, "the effdet state dict")
    return {ours: state[theirs] for ours, theirs in names.items()}


def effdet_state_from_effscale(
    config: DetectorConfig,
    state: Mapping[str, torch.Tensor],
    *,
    head_bn_level_first: bool = False,
) -> dict[str, torch.Tensor]:
    """effscale's state dict of ``build_model(config)`` under effdet's names, for an
    ``effdet.EfficientDet`` built from the effdet config of ``config`` (see
    ``effscale.search.export.effdet_config``)."""
    shapes = _shapes(config)
    _check_keys(state, shapes, "the effscale state dict")
    names = effdet_names(config, head_bn_level_first=head_bn_level_first)
    return {names[k]: v for k, v in state.items()}


def load_effdet_state_dict(model: EfficientDet, state: Mapping[str, torch.Tensor]) -> None:
    """Load effdet's state dict ``state`` into effscale's ``model`` by name (strict)."""
    model.load_state_dict(effscale_state_from_effdet(model.config, state))


def read_effdet_checkpoint(path: str | Path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The effdet model state dict in checkpoint file ``path`` (read with ``weights_only=True``).

    Takes a plain state dict (``torch.save(model.state_dict())``, effdet's released ``.pth``) or
    a training checkpoint holding ``state_dict`` (``state_dict_ema`` with ``ema``) or ``model``;
    ``module.`` (DataParallel) and ``model.`` (effdet's ``DetBench*`` wrapper) prefixes go.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad magic, forbidden global, ...
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"checkpoint: {path} cannot be read ({reason})") from None
    if isinstance(data, dict):
        wrapper = "state_dict_ema" if ema else "state_dict"
        if wrapper in data:
            data = data[wrapper]
        elif ema:
            raise ValueError(f"checkpoint: {path} holds no state_dict_ema; drop --ema")
        elif isinstance(data.get("model"), dict):
            data = data["model"]
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ValueError(f"checkpoint: {path} holds no state dict of tensors")
    state = {}
    for key, value in data.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


# ------------------------------------------------------------------------------------ import


def resolve_effdet_config(effdet_config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """An effdet model config as a plain dict: given as a mapping, as a ``.json`` file (e.g. a
    ``*.effdet.json`` written by ``effscale export``), or as an effdet model name such as
    ``tf_efficientdet_d3`` (needs effdet installed)."""
    if isinstance(effdet_config, Mapping):
        return _plain(effdet_config)
    text = str(effdet_config)
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"effdet config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"effdet_config: {path} is not valid json: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"effdet_config: {path} holds no JSON object")
        return data
    try:
        from effdet.config import get_efficientdet_config  # effdet is optional
        from effdet.config.model_config import efficientdet_model_param_dict
    except ModuleNotFoundError:
        raise ValueError(
            "effdet_config: effdet is not installed to name its models; pip install "
            "effdet==0.4.1 or give an effdet config file (.json)"
        ) from None
    if text not in efficientdet_model_param_dict:
        raise ValueError(
            f"effdet_config: effdet has no model {text!r}; give e.g. tf_efficientdet_d0 or an "
            "effdet config file (.json)"
        )
    return _plain(get_efficientdet_config(text))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):  # OmegaConf's ListConfig too
        return [_plain(v) for v in value]
    return value


def _checkpoint_classes(config: DetectorConfig, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes the checkpoint's class head predicts (None when not readable)."""
    weight = state.get("class_net.predict.conv_pw.weight")
    anchors = config.anchors.num_anchors
    if weight is None or weight.shape[0] % anchors:
        return None
    return int(weight.shape[0] // anchors)


def import_effdet(
    checkpoint: str | Path,
    effdet_config: Mapping[str, Any] | str | Path,
    *,
    name: str | None = None,
    ema: bool = False,
) -> tuple[DetectorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """An effdet checkpoint as effscale's: ``(config, state_dict, effdet config)``.

    ``checkpoint``: an effdet state-dict file (:func:`read_effdet_checkpoint`; ``ema`` takes
    ``state_dict_ema``); ``effdet_config``: its effdet model config (see
    :func:`resolve_effdet_config`). The number of classes is the checkpoint's (a fine-tuned head
    may differ from the named model's 90). ``build_model(config).load_state_dict(state_dict)``
    then holds the checkpoint's weights; raises ``ValueError`` (one line) when effscale cannot
    build the config or the checkpoint does not fit it.
    """
    h = resolve_effdet_config(effdet_config)
    state = read_effdet_checkpoint(checkpoint, ema=ema)
    config = config_from_effdet(h, name=name)
    classes = _checkpoint_classes(config, state)
    if classes is not None and classes != config.num_classes:
        config = config.replace(num_classes=classes)
        h["num_classes"] = classes
    return config, effscale_state_from_effdet(config, state), h


def write_imported(
    folder: str | Path,
    config: DetectorConfig,
    state: Mapping[str, torch.Tensor],
    *,
    source: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<config.name>.toml`` and ``checkpoint.pt`` into ``folder``: an effscale checkpoint
    at step 0 (``model`` and ``ema`` both the weights, no optimizer state) that ``effscale
    evaluate FOLDER`` reads and ``effscale train --config <name>.toml --out FOLDER --resume``
    fine-tunes (with a new optimizer). ``source`` is recorded as ``imported_from``. Returns
    (config path, checkpoint path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = config.save(folder / f"{config.name}.toml")
    weights = dict(state)
    checkpoint_path = save_checkpoint(
        folder / CHECKPOINT_NAME,
        {
            "format": "effscale-checkpoint-1",
            "config": config.to_dict(),
            "model": weights,
            "ema": weights,
            "step": 0,
            "epoch": 0,
            "history": [],
            "imported_from": dict(source or {}),
        },
    )
    return config_path, checkpoint_path


def effdet_output_difference(
    effdet_config: Mapping[str, Any],
    effdet_state: Mapping[str, torch.Tensor],
    *,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> float:
    """How far effscale's model with the mapped weights is from ``effdet.EfficientDet`` with
    ``effdet_state``, both in eval mode on one random image of ``image_size`` pixels: the
    largest, over the class and box output maps, of max |ours - effdet's| / max |effdet's|
    (dimensionless; float32 on the CPU). Needs effdet installed."""
    try:
        from effdet import EfficientDet  # effdet is optional
        from effdet.config import default_detection_model_configs
    except ModuleNotFoundError:
        raise ValueError("effdet is not installed; pip install effdet==0.4.1") from None
    h = default_detection_model_configs()
    h.update({**_plain(effdet_config), "image_size": tuple(image_size)})
    config = config_from_effdet(h)
    theirs = EfficientDet(h, pretrained_backbone=False).eval()
    theirs.load_state_dict(dict(effdet_state))
    ours = build_model(config).eval()
    load_effdet_state_dict(ours, effdet_state)
    images = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        their_cls, their_box = theirs(images)
        our_cls, our_box = ours(images)
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        for a, b in zip([*our_cls, *our_box], [*their_cls, *their_box])
    )
