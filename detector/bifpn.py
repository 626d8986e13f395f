"""The BiFPN: extra pyramid levels from the backbone, then repeated cells of weighted fusion nodes.

The cell's structure is data (:class:`effscale.detector.fpn_graph.FpnGraph`); this module only turns
nodes into layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FUSION_METHODS
from .fpn_graph import FpnGraph, FpnNode
from .layers import ConvBn, SeparableConv, batch_norm, max_pool_down, resize_to

__all__ = ["FUSION_EPS", "FusionNode", "BifpnCell", "ExtraLevels", "Bifpn", "extra_level_sizes"]

#: epsilon of fast normalized fusion, as in the paper
FUSION_EPS = 1e-4


def extra_level_sizes(size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Sizes of ``levels`` successive stride-2 levels below ``size`` (ceil halving)."""
    out = []
    h, w = size
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


class FusionNode(nn.Module):
    """Fuse same-level maps: weighted sum, swish, separable conv, BatchNorm.

    ``fusion``: ``fastattn`` (relu(w) / (sum relu(w) + 1e-4)), ``attn`` (softmax(w)) or ``sum``.
    Inputs whose channels differ from ``channels`` get their own 1x1 conv + BN (``in_channels``
    gives the channels of each input; ``None`` means already ``channels``). Finer inputs are
    max-pooled with ``padding`` (:func:`~.layers.max_pool_down`).
    """

    def __init__(
        self,
        num_inputs: int,
        channels: int,
        fusion: str,
        in_channels: tuple[int, ...],
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if fusion not in FUSION_METHODS:
            raise ValueError(f"fusion: must be one of {', '.join(FUSION_METHODS)}, got {fusion!r}")
        self.fusion = fusion
        self.padding = padding
        self.weight = nn.Parameter(torch.ones(num_inputs)) if fusion != "sum" else None
        self.input_convs = nn.ModuleList(
            ConvBn(c, channels) if c != channels else nn.Identity() for c in in_channels
        )
        self.conv = SeparableConv(channels, channels)
        self.bn = batch_norm(channels)

    def forward(self, inputs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = [resize_to(conv(x), size, self.padding) for conv, x in zip(self.input_convs, inputs)]
        if self.weight is None:  # "sum" fusion has no weights
            fused = torch.stack(maps, dim=-1).sum(dim=-1)
        else:
            if self.fusion == "fastattn":
                w = F.relu(self.weight)
                w = w / (w.sum() + FUSION_EPS)
            else:
                w = torch.softmax(self.weight, dim=0)
            fused = (torch.stack(maps, dim=-1) * w.to(maps[0].dtype)).sum(dim=-1)
        return self.bn(self.conv(F.silu(fused)))


class BifpnCell(nn.Module):
    """One cell: reads a map per level (ascending), returns a map per level (ascending).

    ``in_channels[i]`` is the channel count of input level ``min_level + i``; inputs that differ
    from ``channels`` are resampled by each node that reads them (the first cell only).
    """

    def __init__(
        self,
        graph: FpnGraph,
        channels: int,
        fusion: str,
        in_channels: tuple[int, ...],
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.graph = graph
        all_channels = list(in_channels) + [channels] * len(graph.nodes)
        self.nodes = nn.ModuleList(
            FusionNode(
                len(node.inputs),
                channels,
                fusion,
                tuple(all_channels[i] for i in node.inputs),
                padding,
            )
            for node in graph.nodes
        )
        self._outputs = graph.output_indices()
        self._levels = graph.levels_of_inputs()

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(features)
        sizes = {level: tuple(f.shape[-2:]) for level, f in zip(self._levels, features)}
        node: FpnNode
        for node, module in zip(self.graph.nodes, self.nodes):
            maps.append(module([maps[i] for i in node.inputs], sizes[node.level]))
        return [maps[i] for i in self._outputs]


class ExtraLevels(nn.Module):
    """Levels above the backbone's last: the first from a 1x1 conv + BN (if the channels differ)
    and a stride-2 max-pool of the last backbone map, the others by further max-pooling (both
    with ``padding``, see :func:`~.layers.max_pool_down`)."""

    def __init__(
        self, in_channels: int, channels: int, num_levels: int, padding: str = "symmetric"
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.padding = padding
        needs_conv = num_levels > 0 and in_channels != channels
        self.conv = ConvBn(in_channels, channels) if needs_conv else nn.Identity()

    def forward(self, last: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = self.conv(last)
        for _ in range(self.num_levels):
            x = max_pool_down(x, self.padding)
            out.append(x)
        return out


class Bifpn(nn.Module):
    """Backbone levels ``min_level``..5 plus extra levels up to ``max_level``, then ``repeats``
    cells. Input: maps for levels 3, 4, 5 ([B, C_l, H_l, W_l]). Output: ``max_level - min_level
    + 1`` maps [B, channels, H_l, W_l], ascending level. ``padding`` is the max-pools' (see
    :func:`~.layers.max_pool_down`)."""

    def __init__(
        self,
        *,
        graph: FpnGraph,
        channels: int,
        repeats: int,
        fusion: str,
        backbone_channels: dict[int, int],
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.min_level = graph.min_level
        self.max_level = graph.max_level
        backbone_levels = [lvl for lvl in sorted(backbone_channels) if lvl >= self.min_level]
        top = min(backbone_levels[-1], self.max_level)
        self._backbone_levels = [lvl for lvl in backbone_levels if lvl <= top]
        self.extra = ExtraLevels(backbone_channels[top], channels, self.max_level - top, padding)
        in_channels = tuple(backbone_channels[lvl] for lvl in self._backbone_levels)
        in_channels += (channels,) * (self.max_level - top)
        self.cells = nn.ModuleList(
            BifpnCell(
                graph,
                channels,
                fusion,
                in_channels if i == 0 else (channels,) * graph.num_levels,
                padding,
            )
            for i in range(repeats)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        by_level = dict(zip((3, 4, 5), features))
        maps = [by_level[lvl] for lvl in self._backbone_levels]
        maps += self.extra(maps[-1])
        for cell in self.cells:
            maps = cell(maps)
        return maps
