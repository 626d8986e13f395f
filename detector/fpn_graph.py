"""The BiFPN cell as data: a tuple of fusion nodes over a list of feature maps.

A cell starts with one feature map per pyramid level (``min_level`` .. ``max_level``, in that
order). Each :class:`FpnNode` reads some of the maps produced so far, by index into that growing
list, fuses them at its own level and appends its output. The cell's outputs are the last node
written at each level. This is the structure of EfficientDet's ``bifpn_config`` expressed as a
frozen value, so that other graphs can be declared without touching the module code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FpnNode", "FpnGraph", "bifpn_graph"]


@dataclass(frozen=True)
class FpnNode:
    """One fusion node: output ``level``, and the indices of the feature maps it fuses.

    Index ``i < num_levels`` is the cell's i-th input level (``min_level + i``); larger indices
    refer to earlier nodes' outputs (``num_levels + node_position``).
    """

    level: int
    inputs: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.inputs) < 2:
            raise ValueError(f"FpnNode.inputs: a fusion node needs >= 2 inputs, got {self.inputs}")


@dataclass(frozen=True)
class FpnGraph:
    """A cell's node list for levels ``min_level`` .. ``max_level`` (inclusive)."""

    min_level: int
    max_level: int
    nodes: tuple[FpnNode, ...]

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels the cell reads and writes."""
        return self.max_level - self.min_level + 1

    def levels_of_inputs(self) -> list[int]:
        """The level of every map in the growing list: the inputs, then each node's output."""
        return list(range(self.min_level, self.max_level + 1)) + [n.level for n in self.nodes]

    def output_indices(self) -> list[int]:
        """For each level, ascending, the index of the last map written at that level."""
        levels = self.levels_of_inputs()
        last = {}
        for index, level in enumerate(levels):
            last[level] = index
        return [last[level] for level in range(self.min_level, self.max_level + 1)]

    def validate(self) -> None:
        """Raise ``ValueError`` if a node reads a map that does not exist yet."""
        available = self.num_levels
        for position, node in enumerate(self.nodes):
            if not self.min_level <= node.level <= self.max_level:
                raise ValueError(
                    f"FpnGraph.nodes[{position}].level: must be in "
                    f"[{self.min_level}, {self.max_level}], got {node.level}"
                )
            for index in node.inputs:
                if not 0 <= index < available:
                    raise ValueError(
                        f"FpnGraph.nodes[{position}].inputs: index {index} is not produced yet "
                        f"(valid: 0..{available - 1})"
                    )
            available += 1


def bifpn_graph(min_level: int, max_level: int) -> FpnGraph:
    """EfficientDet's BiFPN cell: a top-down pass, then a bottom-up pass.

    Top-down, from ``max_level - 1`` to ``min_level``: each node fuses the input at its level and
    the previous (coarser) top-down output. Bottom-up, from ``min_level + 1`` to ``max_level``:
    each node fuses the input at its level, the top-down node at its level (intermediate levels
    only) and the previous (finer) output. With levels 3-7 this gives 8 nodes.
    """
    if max_level <= min_level:
        raise ValueError(f"max_level: must be > min_level ({min_level}), got {max_level}")
    num_levels = max_level - min_level + 1
    nodes: list[FpnNode] = []
    top_down_index: dict[int, int] = {}
    previous = num_levels - 1  # the coarsest input
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(FpnNode(level=level, inputs=(level - min_level, previous)))
        previous = num_levels + len(nodes) - 1
        top_down_index[level] = previous
    for level in range(min_level + 1, max_level + 1):
        inputs = [level - min_level]
        if level in top_down_index:
            inputs.append(top_down_index[level])
        inputs.append(previous)
        nodes.append(FpnNode(level=level, inputs=tuple(inputs)))
        previous = num_levels + len(nodes) - 1
    graph = FpnGraph(min_level=min_level, max_level=max_level, nodes=tuple(nodes))
    graph.validate()
    return graph
