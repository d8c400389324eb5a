# The compiled loop's interface (hwsflow/core/_fastpath.c over fastpath_core.c).
from collections.abc import Mapping, Sequence
from typing import Any

from hwsflow.wire.netlink import Buffer

IN_FIELDS: tuple[str, ...]  # the psample values it reads, by psample.USUAL_FIELDS name
FLOW_FIELDS: tuple[str, ...]  # the flow sample fields it writes, by sflow.FLOW_COMPACT_FIELDS name

class Loop:
    def __init__(
        self,
        checks: Sequence[tuple[int, int, int]],
        fields: Mapping[str, tuple[int, int]],
        data_at: int,
        flow_at: Mapping[str, int],
        flow_size: int,
        flow_constants: Mapping[str, int],
    ) -> None: ...
    def run(
        self,
        buf: Buffer,
        lengths: Sequence[int],
        stride: int,
        first: int,
        uptime_ms: int,
        builder: Any,
        by_group: dict[int, Any],
    ) -> tuple[int, int]:
        """Pack slots from first on until one is not the loop's: (that slot, or len(lengths); samples packed)."""
