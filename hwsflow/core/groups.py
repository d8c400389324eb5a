"""psample group ids: one per (port, direction), allocated from a configurable base.

Pure mapping; samples whose group is not here are not hwsflow's and are ignored.
"""

from __future__ import annotations

from hwsflow.core.datasource import DataSource, GroupBinding
from hwsflow.core.model import GROUP_MAX, Direction


class GroupTable:
    """Allocates group ids, maps each to its binding, and keeps one data source per port."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.by_group: dict[int, GroupBinding] = {}  # read directly by the pipeline's hot path
        self.sources: dict[int, DataSource] = {}  # by ifindex
        self._by_port: dict[tuple[int, Direction], int] = {}
        self.version = 0  # bumped by every bind and release: the pipeline rebuilds its inline table on a change

    def rebase(self, base: int) -> None:
        """Allocate from base from now on; only with no group bound, so no port keeps a group below it."""
        if self._by_port:
            raise ValueError(f"group_base cannot move while {len(self._by_port)} groups are bound")
        self.base = base

    def allocate(self, ifindex: int, direction: Direction, wanted: int | None = None) -> int:
        """The group for (ifindex, direction): wanted if given and free, else the one it has, else the
        lowest free id from base.  wanted serves receive-only groups and filters adopted after a restart."""
        key = (ifindex, direction)
        taken = {group for port, group in self._by_port.items() if port != key}
        if wanted is not None and wanted not in taken:
            self._by_port[key] = wanted
            return wanted
        if key in self._by_port:
            return self._by_port[key]
        group = self.base
        while group in taken:
            group += 1
        if group > GROUP_MAX:
            raise ValueError(f"no psample group left above group_base {self.base}")
        self._by_port[key] = group
        return group

    def bind(self, ifindex: int, ifname: str, direction: Direction, rate: int, header: int,
             wanted: int | None = None) -> GroupBinding:
        """Allocate the group for (port, direction) and route its samples to the port's data source.

        Binding a bound (port, direction) again replaces its binding; the port's data source, with
        its sequence numbers and pool, stays.
        """
        source = self.sources.setdefault(ifindex, DataSource(ifindex, ifname))
        source.ifname = ifname
        old = self._by_port.get((ifindex, direction))
        group = self.allocate(ifindex, direction, wanted)
        if old is not None and old != group:
            self.by_group.pop(old, None)
        binding = GroupBinding(group, direction, rate, header, source)
        self.by_group[group] = binding
        self.version += 1
        return binding

    def release(self, ifindex: int, direction: Direction) -> GroupBinding | None:
        """Forget (port, direction); the port's data source goes with its last direction."""
        group = self._by_port.pop((ifindex, direction), None)
        binding = self.by_group.pop(group, None) if group is not None else None
        if not any(port == ifindex for port, _ in self._by_port):
            self.sources.pop(ifindex, None)
        self.version += 1
        return binding

    def get(self, group: int) -> GroupBinding | None:
        return self.by_group.get(group)
