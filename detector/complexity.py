"""Parameters, multiply-adds and activations of a detector, counted from its config alone.

Counting convention
-------------------
* ``params``: learnable parameters (conv weights and biases, BatchNorm affine weights, fusion
  weights). BatchNorm running statistics are buffers and are not counted. This equals
  ``sum(p.numel() for p in build_model(config).parameters())`` exactly.
* ``macs``: multiply-accumulates of every convolution (dense, depthwise, 1x1, and the SE
  block's 1x1 convs) for **one image** at ``config.image_size``. Bias additions, BatchNorm,
  activations, pooling, resampling, the weighted sums of fusion nodes and residual additions are
  not counted. This equals ``torch.utils.flop_counter.FlopCounterMode``'s total divided by 2
  (it counts two FLOPs per multiply-add). The official EfficientDet profiler also counts
  elementwise ops, so its figures are 0.8-2.3% higher; the EfficientDet paper's "FLOPs" are
  multiply-adds.
* ``activations``: output elements of every convolution for one image (the convention of pycls,
  Radosavovic et al. 2020), a proxy for memory traffic.

The count is analytic: it walks the same decoded architecture table that
:mod:`effscale.detector.backbone` builds, so it allocates nothing and takes about a millisecond.
:func:`trace_complexity` measures the same quantities on the meta device and is the reference
that tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from .backbone import BlockSpec, decode_backbone, feature_channels
from .config import DetectorConfig
from .fpn_graph import bifpn_graph
from .model import build_model
from .scaling import make_divisible

__all__ = ["COUNTING_CONVENTION", "Complexity", "count_complexity", "trace_complexity"]

COUNTING_CONVENTION = (
    "params: learnable parameters (BN buffers excluded); macs: multiply-accumulates of all "
    "convolutions for one image at the config's image size (bias, BN, activations, pooling, "
    "resampling and fusion sums excluded; = torch FlopCounterMode total / 2); activations: output "
    "elements of all convolutions for one image"
)


@dataclass
class _Tally:
    params: int = 0
    macs: int = 0
    activations: int = 0

    def conv(
        self,
        cin: int,
        cout: int,
        k: int,
        out_hw: tuple[int, int],
        *,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        per_position = cout * (cin // groups) * k * k
        positions = out_hw[0] * out_hw[1]
        self.params += per_position + (cout if bias else 0)
        self.macs += per_position * positions
        self.activations += cout * positions

    def bn(self, channels: int, copies: int = 1) -> None:
        self.params += 2 * channels * copies


@dataclass(frozen=True)
class Complexity:
    """Cost of one detector: ``params`` (count), ``macs`` (multiply-adds per image) and
    ``activations`` (conv output elements per image), with a per-part breakdown
    (``backbone``, ``fpn``, ``class_head``, ``box_head``) of each."""

    params: int
    macs: int
    activations: int
    parts: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)

    @property
    def gmacs(self) -> float:
        """Multiply-adds per image, in billions."""
        return self.macs / 1e9

    def to_dict(self) -> dict[str, int]:
        """``{"params", "macs", "activations"}`` as plain ints."""
        return {"params": self.params, "macs": self.macs, "activations": self.activations}


def _halve(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    if stride == 1:
        return hw
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


def _count_block(t: _Tally, b: BlockSpec, in_hw: tuple[int, int]) -> tuple[int, int]:
    out_hw = _halve(in_hw, b.stride)
    if b.kind == "ds":
        t.conv(b.in_channels, b.in_channels, b.kernel, out_hw, groups=b.in_channels)
        t.bn(b.in_channels)
        se_in = b.in_channels
        se_ratio = b.se_ratio
        project_in = b.in_channels
    elif b.kind == "ir":
        mid = make_divisible(b.in_channels * b.expansion)
        t.conv(b.in_channels, mid, 1, in_hw)
        t.bn(mid)
        t.conv(mid, mid, b.kernel, out_hw, groups=mid)
        t.bn(mid)
        se_in = mid
        se_ratio = b.se_ratio / b.expansion
        project_in = mid
    else:  # pragma: no cover - the table holds only ds and ir blocks
        raise ValueError(f"block kind {b.kind!r} is not counted")
    if b.se_ratio:
        reduced = round(se_in * se_ratio)
        t.conv(se_in, reduced, 1, (1, 1), bias=True)
        t.conv(reduced, se_in, 1, (1, 1), bias=True)
    t.conv(project_in, b.out_channels, 1, out_hw)
    t.bn(b.out_channels)
    return out_hw


def _count_backbone(config: DetectorConfig) -> tuple[_Tally, dict[int, tuple[int, int]]]:
    t = _Tally()
    stem, blocks = decode_backbone(config.backbone)
    hw = _halve(config.image_size, 2)
    t.conv(3, stem, 3, hw)
    t.bn(stem)
    sizes: dict[int, tuple[int, int]] = {1: hw}
    level = 1
    for block in blocks:
        hw = _count_block(t, block, hw)
        if block.stride == 2:
            level += 1
            sizes[level] = hw
    return t, sizes


def count_complexity(config: DetectorConfig) -> Complexity:
    """Params, MACs and activations of ``build_model(config)`` (see the module's convention)."""
    backbone, sizes = _count_backbone(config)
    channels = config.fpn.channels
    for level in range(6, config.max_level + 1):
        sizes[level] = _halve(sizes[level - 1], 2)
    level_hw = [sizes[level] for level in config.levels]

    fpn = _Tally()
    backbone_channels = feature_channels(config.backbone)
    top = min(5, config.max_level)
    if config.max_level > top and backbone_channels[top] != channels:
        fpn.conv(backbone_channels[top], channels, 1, sizes[top], bias=True)
        fpn.bn(channels)
    graph = bifpn_graph(config.min_level, config.max_level)
    input_levels = graph.levels_of_inputs()
    first_channels = [
        backbone_channels.get(lvl, channels) if lvl <= top else channels for lvl in config.levels
    ]
    for cell in range(config.fpn.repeats):
        map_channels = first_channels if cell == 0 else [channels] * graph.num_levels
        map_channels = map_channels + [channels] * len(graph.nodes)
        for node in graph.nodes:
            for index in node.inputs:
                if map_channels[index] != channels:
                    fpn.conv(
                        map_channels[index], channels, 1, sizes[input_levels[index]], bias=True
                    )
                    fpn.bn(channels)
            if config.fpn.fusion != "sum":
                fpn.params += len(node.inputs)
            node_hw = sizes[node.level]
            fpn.conv(channels, channels, 3, node_hw, groups=channels)
            fpn.conv(channels, channels, 1, node_hw, bias=True)
            fpn.bn(channels)

    heads = {}
    for name, outputs in (("class_head", config.num_classes), ("box_head", 4)):
        t = _Tally()
        out = config.anchors.num_anchors * outputs
        for i, hw in enumerate(level_hw):
            scale_params = i == 0  # shared weights: count parameters once
            for _ in range(config.head.repeats):
                _shared_conv(t, channels, channels, hw, scale_params)
            _shared_conv(t, channels, out, hw, scale_params)
        t.bn(channels, copies=config.head.repeats * len(level_hw))
        heads[name] = t

    parts = {"backbone": backbone, "fpn": fpn, **heads}
    return Complexity(
        params=sum(p.params for p in parts.values()),
        macs=sum(p.macs for p in parts.values()),
        activations=sum(p.activations for p in parts.values()),
        parts={
            k: {"params": v.params, "macs": v.macs, "activations": v.activations}
            for k, v in parts.items()
        },
    )


def _shared_conv(t: _Tally, cin: int, cout: int, hw: tuple[int, int], count_params: bool) -> None:
    """A separable conv whose weights are shared across levels: MACs at every level, params once."""
    before = t.params
    t.conv(cin, cin, 3, hw, groups=cin)
    t.conv(cin, cout, 1, hw, bias=True)
    if not count_params:
        t.params = before


def trace_complexity(config: DetectorConfig) -> Complexity:
    """The same three counts measured by building the model on the meta device and running it
    under ``FlopCounterMode`` (MACs = FLOPs / 2) with forward hooks on every convolution
    (activations). Slow (about a second for large presets); use it to check
    :func:`count_complexity`, not to gate trials."""

    with torch.device("meta"):
        model = build_model(config).eval()
        images = torch.empty(1, 3, *config.image_size)
    params = sum(p.numel() for p in model.parameters())
    activations = 0

    def hook(_module, _inputs, output):
        nonlocal activations
        activations += output[0].numel()

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    for handle in handles:
        handle.remove()
    return Complexity(params=params, macs=counter.get_total_flops() // 2, activations=activations)
