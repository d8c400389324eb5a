"""sFlow data sources and their accounting: sequence numbers, sample pool, drops.

Pure state; the pipeline updates it per sample, the agent per poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["ingress", "egress"]
U32 = 0xFFFFFFFF
HALF_U32 = 1 << 31


@dataclass(slots=True)
class DataSource:
    """One port in one direction, fed by one psample group."""

    ifindex: int  # full 32-bit ifindex from rtnetlink: psample's IIFINDEX is only 16 bits
    ifname: str
    direction: Direction
    group: int
    rate: int  # configured 1-in-N
    header: int  # bytes of each packet exported
    flow_seq: int = 0  # sequence number of the last flow sample sent
    pool: int = 0  # packets that could have been sampled (64-bit here, wrapped on the wire)
    drops: int = 0  # samples lost, cumulative
    samples: int = 0  # samples received
    last_group_seq: int | None = None

    def account(self, group_seq: int, rate: int) -> None:
        """Advance seq, pool and drops for one received sample of this source's group."""
        last = self.last_group_seq
        if last is not None:
            gap = (group_seq - last - 1) & U32
            # all-zero sequences (mlx5 hardware) are no gap; a jump backwards is a reset (the group was recreated)
            if gap and gap < HALF_U32 and not (group_seq == 0 and last == 0):
                self.drops += gap
                self.pool += gap * rate  # lost samples stood for packets too
        self.last_group_seq = group_seq
        self.samples += 1
        self.flow_seq += 1
        self.pool += rate
