"""ImageNet weights for the backbone: a timm EfficientNet's state dict, from timm's cache or a
local file, loaded by name into :class:`~.backbone.EfficientNetBackbone` when every tensor fits.

A source is a file (a path, or a name ending in ``.pth``, ``.pt``, ``.bin``, ``.safetensors`` or
``.ckpt``) holding a timm EfficientNet state dict (``torch.save(model.state_dict(), path)``;
also ``{"state_dict": ...}`` or ``{"model": ...}``), or a timm model name such as
``tf_efficientnet_b0`` (or ``tf_efficientnet_b0.ns_jft_in1k``), whose released weights are read
from timm's Hugging Face cache only: nothing is downloaded (run ``timm.create_model(name,
pretrained=True)`` once where there is a network to fill the cache).

The weights fit a backbone when their ``conv_stem``, ``bn1`` and ``blocks`` tensors have exactly
the backbone's names and shapes (the classifier, ``conv_head`` and ``bn2`` are not part of a
detector's backbone and are dropped). timm's EfficientNets exist at the B0-B8 and L2 multipliers
only, so a backbone at other multipliers is refused in one line that names the weights'
EfficientNet. The ``tf_`` weights were trained with TF "same" padding: a backbone with
``padding = "same"`` reproduces them exactly, a ``"symmetric"`` one shifts stride-2 windows by a
pixel (they still load).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .backbone import EfficientNetBackbone, efficientnet_features
from .config import BackboneConfig
from .effdet_config import TIMM_EFFICIENTNETS

__all__ = [
    "WEIGHT_SUFFIXES",
    "PretrainedError",
    "is_weights_file",
    "resolve_pretrained",
    "read_backbone_weights",
    "check_pretrained_fits",
    "load_pretrained_backbone",
]

#: file names that make a ``pretrained`` source a file rather than a timm model name
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
#: timm EfficientNet tensors that are not part of the feature extractor
_CLASSIFIER_PREFIXES = ("conv_head.", "bn2.", "classifier.")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedError(ValueError):
    """Bad pretrained weights for a backbone: ``problem`` and ``fix``; the message is
    ``"pretrained: <problem>; <fix>"`` (the study file shows it under ``base.pretrained``, the
    command line under ``--pretrained``)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"pretrained: {problem}; {fix}")


def is_weights_file(source: str | Path) -> bool:
    """Whether ``source`` names a file (a path with a folder part or a weights suffix) rather
    than a timm model."""
    text = str(source)
    return isinstance(source, Path) or "/" in text or "\\" in text or text.endswith(WEIGHT_SUFFIXES)


def _cached_timm_file(name: str, cache_dir: str | Path | None) -> Path:
    if not timm.is_model(name):
        raise PretrainedError(
            f"{name!r} is neither a weights file ({', '.join(WEIGHT_SUFFIXES)}) nor a timm model",
            "give a local state-dict file or a timm EfficientNet such as tf_efficientnet_b0",
        )
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = None if cfg is None else cfg.hf_hub_id
    if cfg is None or not hub_id:
        raise PretrainedError(
            f"timm has no released weights for {name!r}", "give a local state-dict file"
        )
    repo, _, revision = str(hub_id).partition("@")
    names = [*_HF_FILES, *([cfg.hf_hub_filename] if cfg.hf_hub_filename else [])]
    for filename in names:
        found = try_to_load_from_cache(
            repo, filename, cache_dir=cache_dir, revision=revision or None
        )
        if isinstance(found, str):
            return Path(found)
    raise PretrainedError(
        f"timm's weights of {name!r} ({repo}) are not in the local Hugging Face cache and "
        "nothing is downloaded here",
        f"run timm.create_model({name!r}, pretrained=True) once with a network, or give a "
        "local state-dict file",
    )


def resolve_pretrained(source: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The local file that holds ``source``'s weights: the file itself, or the cached file of a
    timm model (``cache_dir``: the Hugging Face cache, default timm's). Raises
    :class:`PretrainedError`."""
    if not is_weights_file(source):
        return _cached_timm_file(str(source), cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise PretrainedError(
            f"weights file {path} not found", "give an existing state-dict file or a timm name"
        )
    return path


def _unwrap(data: Any, path: Path) -> dict[str, Any]:
    if isinstance(data, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
                break
    if not isinstance(data, Mapping):
        raise PretrainedError(f"{path} holds no state dict", "save model.state_dict() with torch")
    state = {}
    for key, value in data.items():
        key = str(key)
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith(_CLASSIFIER_PREFIXES):
            state[key] = value
    return state


def _torch_load(path: Path, *, mmap: bool) -> Any:
    if mmap:  # shapes without reading the tensors; files in torch's legacy format cannot map
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def read_backbone_weights(path: str | Path, *, shapes_only: bool = False) -> dict[str, Any]:
    """The feature-extractor tensors of the EfficientNet state dict in file ``path`` (classifier,
    ``conv_head`` and ``bn2`` dropped; a ``module.`` prefix stripped), read with
    ``weights_only=True`` or safetensors. With ``shapes_only`` the values are shapes (tuples),
    read without loading the tensors where the format allows."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safetensors.safe_open(str(path), framework="pt") as handle:
                data: Any = {
                    k: tuple(handle.get_slice(k).get_shape())
                    if shapes_only
                    else handle.get_tensor(k)
                    for k in handle.keys()
                }
        else:
            data = _torch_load(path, mmap=shapes_only)
    except Exception as exc:  # truncated zip, bad magic, forbidden global, ...
        reason = " ".join(str(exc).split())[:160]
        raise PretrainedError(
            f"{path} cannot be read ({reason})", "give a torch state-dict file"
        ) from None
    state = _unwrap(data, path)
    if shapes_only:
        return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    return state


def _backbone_shapes(config: BackboneConfig, padding: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        body = efficientnet_features(config, padding=padding)
    return {k: tuple(v.shape) for k, v in body.state_dict().items()}


def _misfit(theirs: Mapping[str, Any], ours: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why weight shapes ``theirs`` do not fit backbone shapes ``ours`` (None when they do)."""
    missing = [k for k in ours if k not in theirs]
    if missing:
        return f"{len(missing)} backbone tensors are missing from them (first: {missing[0]})"
    extra = [k for k in theirs if k not in ours]
    if extra:
        return f"{len(extra)} of their tensors have no place in the backbone (first: {extra[0]})"
    for key, shape in ours.items():
        if tuple(theirs[key]) != shape:
            return f"{key} is {tuple(theirs[key])} there and {shape} here"
    return None


def _weights_variant(theirs: Mapping[str, Any], padding: str) -> str | None:
    for name, (width, depth) in TIMM_EFFICIENTNETS.items():
        config = BackboneConfig(width_multiplier=width, depth_multiplier=depth)
        if _misfit(theirs, _backbone_shapes(config, padding)) is None:
            return f"{name} (width {width:g} x depth {depth:g})"
    return None


def check_pretrained_fits(
    backbone: BackboneConfig,
    source: str | Path,
    *,
    padding: str = "same",
    cache_dir: str | Path | None = None,
) -> Path:
    """Check that ``source``'s weights fit ``backbone`` tensor for tensor, without loading them
    (shapes only); returns the weights file. Raises :class:`PretrainedError` naming the
    mismatch and the EfficientNet the weights are for."""
    path = resolve_pretrained(source, cache_dir=cache_dir)
    theirs = read_backbone_weights(path, shapes_only=True)
    why = _misfit(theirs, _backbone_shapes(backbone, padding))
    if why is None:
        return path
    variant = _weights_variant(theirs, padding)
    b = backbone
    raise PretrainedError(
        f"the weights in {source} do not fit the backbone (width {b.width_multiplier:g} x "
        f"depth {b.depth_multiplier:g}): {why}",
        f"these are the weights of {variant}; use those multipliers or drop pretrained"
        if variant
        else "give weights of a timm EfficientNet with the backbone's multipliers (B0-B8, L2)",
    )


def load_pretrained_backbone(
    backbone: nn.Module, source: str | Path, *, cache_dir: str | Path | None = None
) -> Path:
    """Copy ``source``'s weights into ``backbone``, an :class:`~.backbone.EfficientNetBackbone`
    (every tensor, by name, after :func:`check_pretrained_fits` for the backbone's ``config``
    and ``padding``); returns the weights file."""
    if not isinstance(backbone, EfficientNetBackbone):
        raise TypeError(f"backbone: an EfficientNetBackbone, got {type(backbone).__name__}")
    path = check_pretrained_fits(
        backbone.config, source, padding=backbone.padding, cache_dir=cache_dir
    )
    backbone.body.load_state_dict(read_backbone_weights(path))
    return path
