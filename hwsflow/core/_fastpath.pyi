# The compiled loop's interface (hwsflow/core/_fastpath.c over fastpath_core.c).
from collections.abc import Mapping, Sequence
from typing import Any

from hwsflow.wire.netlink import Buffer

IN_FIELDS: tuple[str, ...]  # the psample values it reads, by psample.USUAL_FIELDS name
FLOW_FIELDS: tuple[str, ...]  # the flow sample fields it writes, by sflow.FLOW_COMPACT_FIELDS name
TAIL_FIELDS: tuple[str, ...]  # the datagram header fields it writes when it finishes one, sflow.DATAGRAM_TAIL_FIELDS

class Outbox:
    """Finished datagrams copied back to back; sent to a connected socket with sendmmsg."""

    @property
    def loaded(self) -> int:
        """How many datagrams it holds."""
    def append(self, datagram: Buffer, /) -> None: ...
    def datagrams(self) -> list[bytes]: ...
    def clear(self) -> None: ...
    def send(self, fd: int, first: int, /) -> int:
        """Datagrams first.. in order, never blocking: how many the kernel took.  An error on the first raises
        OSError; a short count means datagram first + count failed and its error code is not known."""

class Loop:
    def __init__(
        self,
        checks: Sequence[tuple[int, int, int]],
        fields: Mapping[str, tuple[int, int]],
        data_at: int,
        flow_at: Mapping[str, int],
        flow_size: int,
        flow_constants: Mapping[str, int],
        tail_at: Mapping[str, int],
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
        """Pack slots from first on until one is not the loop's: (that slot, or len(lengths); samples packed).

        A full datagram is finished into builder.outbox (an Outbox) here; builder.finished_elsewhere hears of it
        once, at the end."""
