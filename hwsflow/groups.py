"""psample group ids: one per (port, direction), allocated from a configurable base.

Pure mapping; samples whose group is not here are not hwsflow's and are ignored.
"""

from __future__ import annotations

from hwsflow.datasource import DataSource, Direction


class GroupTable:
    """Allocates group ids and maps each to its data source."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.by_group: dict[int, DataSource] = {}  # read directly by the pipeline's hot path
        self._by_port: dict[tuple[int, Direction], int] = {}

    def allocate(self, ifindex: int, direction: Direction) -> int:
        """The group for (ifindex, direction): the one it has, or the lowest free id from base."""
        key = (ifindex, direction)
        if key in self._by_port:
            return self._by_port[key]
        taken = set(self._by_port.values())
        group = self.base
        while group in taken:
            group += 1
        if group > 0xFFFFFFFF:
            raise ValueError(f"no psample group left above group_base {self.base}")
        self._by_port[key] = group
        return group

    def bind(self, source: DataSource) -> None:
        self.by_group[source.group] = source

    def release(self, ifindex: int, direction: Direction) -> DataSource | None:
        group = self._by_port.pop((ifindex, direction), None)
        return self.by_group.pop(group, None) if group is not None else None

    def get(self, group: int) -> DataSource | None:
        return self.by_group.get(group)

    def sources(self) -> list[DataSource]:
        return list(self.by_group.values())
