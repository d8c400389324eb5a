"""sFlow data sources and the psample groups that feed them: sequence numbers, sample pool, drops.

A data source is a port (sFlow's source id is its ifindex): one flow-sample
sequence, one pool and one drop count, whatever direction its samples come
from.  Each direction has its own psample group, whose GROUP_SEQ gaps say how
many of that direction's samples were lost.  Pure state.
"""

from __future__ import annotations

from dataclasses import dataclass
from hwsflow.core.model import U32_MAX as U32, Direction
HALF_U32 = 1 << 31


@dataclass(slots=True)
class DataSource:
    """One sampled port as collectors see it."""

    ifindex: int  # full 32-bit ifindex from rtnetlink: psample's IIFINDEX is only 16 bits
    ifname: str
    flow_seq: int = 0  # sequence number of the last flow sample sent: one per sample received
    pool: int = 0  # packets that could have been sampled (unbounded here, wrapped on the wire)
    drops: int = 0  # samples lost, cumulative
    counter_seq: int = 0  # sequence number of the last counter sample sent
    # how far re-syncs lifted the pool above what samples counted: the packets of samples lost but not
    # yet seen as a GROUP_SEQ gap are in it, and must not be counted again when the gap shows
    resync_credit: int = 0
    # how far the pool was ahead of the kernel's count at the last re-sync, less what samples have filled
    # since: samples fill this first (all but the sampled packet at 1-in-N > 1, see advance), so the pool
    # creeps or holds, never goes back, until the kernel's count passes it
    pool_hold: int = 0

    @property
    def samples(self) -> int:
        """Samples received: each one is exported as the next flow sample (a count the hot path need not keep)."""
        return self.flow_seq

    def resync_pool(self, kernel_packets: int, pool_when_read: int | None = None) -> None:
        """Converge on the packets the kernel's sample actions saw, without ever going back.

        Behind: the pool is lifted to the kernel's count.  Ahead (the estimate from samples x rate ran
        over): samples fill the difference before they advance the pool by more than the sampled packet
        (see advance), so it stays ahead by no more than what samples have added since this reading.

        pool_when_read is the pool when the counters were asked for: samples taken while the answer was on
        its way may stand for packets the kernel counted after it answered, so only what the pool was
        ahead by then is held.  None: the pool now.
        """
        if kernel_packets >= self.pool:
            self.resync_credit += kernel_packets - self.pool
            self.pool = kernel_packets
            self.pool_hold = 0
        else:
            ahead = (self.pool if pool_when_read is None else min(pool_when_read, self.pool)) - kernel_packets
            self.pool_hold = max(ahead, 0)

    def advance(self, packets: int) -> None:
        """Add the packets one received sample stood for (its rate): while the pool is ahead, into the hold first.

        At 1-in-N with N > 1 the pool still advances by 1 (the sampled packet).  sfacctd weighs a sample by the
        pool's advance since the previous one, but one whose pool stood still by its full rate, and then the
        next by the advance divided over both: a pool that stood still would keep the phantom packets the hold
        is there to take back, and let the next sample lose its own.  At 1-in-1 a standing pool is weighed at
        1 all the same, the truth, so there the sample's packet goes into the hold and the pool meets tc's count.
        """
        self._fill(packets, 1 if packets > 1 else 0)

    def add_lost(self, packets: int) -> None:
        """The packets that lost samples stood for, less what a re-sync has already counted."""
        absorbed = min(self.resync_credit, packets)
        self.resync_credit -= absorbed
        self._fill(packets - absorbed, 0)

    def _fill(self, packets: int, counted: int) -> None:
        """Add packets to the pool, all but `counted` of them into the hold while there is one."""
        held = min(self.pool_hold, packets - counted)
        self.pool_hold -= held
        self.pool += packets - held


@dataclass(slots=True)
class GroupBinding:
    """One psample group feeding a data source in one direction."""

    group: int
    direction: Direction
    rate: int  # configured 1-in-N
    header: int  # bytes of each packet exported
    source: DataSource
    last_group_seq: int | None = None
    # the rate of the last sample received (0: none yet): a gap between samples of two rates (back-off changed
    # the rate in place) counts its lost samples at the lower one, and a pool re-sync lifts what that misses
    last_rate: int = 0
    drops: int = 0
    tc_packets: int = 0  # the sample action's packet counter at the last reading
    tc_total: int = 0  # packets seen by this direction's actions, across filter reinstalls

    def sync_tc(self, packets: int) -> None:
        """Record a reading of the action's packet counter; a smaller one means the filter was reinstalled."""
        self.tc_total += packets - self.tc_packets if packets >= self.tc_packets else packets
        self.tc_packets = packets

    def account(self, group_seq: int, rate: int) -> None:
        """Advance the source's seq, pool and drops for one received sample of this group."""
        source = self.source
        last = self.last_group_seq
        if last is not None:
            gap = (group_seq - last - 1) & U32
            # all-zero sequences (mlx5 hardware) are no gap; a jump backwards is a reset (the group was recreated)
            if gap and gap < HALF_U32 and not (group_seq == 0 and last == 0):
                self.drops += gap
                source.drops += gap
                lost_rate = min(self.last_rate, rate) if self.last_rate else rate
                source.add_lost(gap * lost_rate)  # lost samples stood for packets too
        self.last_group_seq = group_seq
        self.last_rate = rate
        source.flow_seq += 1
        source.advance(rate)
