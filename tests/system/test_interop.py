"""The independent collectors behind the VM interop tests, on the host: can their checks fail, and how do they count?

tests/vm/test_vm_interop.py replays the real agent's datagrams to sfcapd and
sfacctd through tests/helpers/interop.py; these tests feed the same helpers datagrams
built here, with known numbers and known faults, so the VM's verdicts mean
what they say.  Measured with nfdump-sflow 1.7.1 and pmacct 1.7.7 (Debian 12).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hwsflow.core.datasource import DataSource, GroupBinding
from hwsflow.wire.sflow import DatagramBuilder
from tests.helpers import interop

AGENT = "192.0.2.1"
PORT = 7
DATAGRAM_HEADER = 28  # version, IPv4 agent address, sub-agent, sequence, uptime, sample count


def udp_frame() -> bytes:
    """Ethernet + IPv4 + UDP: pmacct accounts IP samples only."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)))
    return bytes(12) + b"\x08\x00" + ip + struct.pack(">HHHH", 9, 9, 8, 0)


def flow_datagrams(rate: int, pools: list[int], per_datagram: int = 4) -> list[bytes]:
    """One flow sample of PORT per pool value, at this rate, per_datagram samples to a datagram."""
    frame = udp_frame()
    builder = DatagramBuilder(AGENT, sub_agent_id=0)
    out: list[bytes] = []
    for seq, pool in enumerate(pools, 1):
        builder.add_flow_sample(0, seq, 0, PORT, rate, pool, 0, PORT, 0, len(frame) + 4, 4, frame)
        if seq % per_datagram == 0:
            builder.flush(0)
            out += builder.take()
    builder.flush(0)
    return out + builder.take()


def test_sfcapd_counts_each_sample_at_its_rate(tmp_path: Path):
    view = interop.sfcapd_decode(flow_datagrams(3, [3, 6, 9, 12, 15]), tmp_path)
    assert view.problems == [], view.log
    assert (view.flows, view.packets, view.socket_drops) == (5, 15, 0)


def test_sfcapd_reports_a_wrong_sample_length(tmp_path: Path):
    """The VM test's `problems == []` can fail: a flow sample whose length field is 4 bytes off is reported."""
    (datagram,) = flow_datagrams(2, [2, 4])
    bad = bytearray(datagram)
    offset = DATAGRAM_HEADER + 4  # the first sample's length, after its format
    (length,) = struct.unpack_from(">I", bad, offset)
    struct.pack_into(">I", bad, offset, length - 4)
    view = interop.sfcapd_decode([bytes(bad)], tmp_path)
    assert any("length error" in line for line in view.problems), view.log
    assert view.flows == 0


@pytest.mark.parametrize(("rate", "pools", "expected"), [
    (2, [2, 4, 6, 8, 10], 10),  # pool advancing by the rate: the same as rate x samples
    (2, [10, 20, 30, 40, 50], 2 + 40),  # the pool, not the rate, counts from the second sample on
    (2, [1, 2, 3, 4, 5], 2 + 4),  # even when it advances by less than the rate
    # a pool that stands still: that sample at its rate, and the next by the advance over both, rounded down
    (2, [2, 4, 4, 4, 6], 2 + 2 + 2 + 2 + 0),
    (2, [10, 20, 20, 30, 40], 2 + 10 + 2 + 5 + 10),
    (1, [1, 2, 2, 2, 3], 1 + 1 + 1 + 1 + 0),  # at 1-in-1 a standing pool is counted at 1, the sample's truth
])
def test_sfacctd_renormalises_by_the_sample_pool(tmp_path: Path, rate: int, pools: list[int], expected: int):
    """sfacctd_renormalize scales a source's first sample by its rate and each later one by the pool's advance,
    or by its rate where the pool did not advance (pmacct's SF_counters_renormalize_handler).

    So a collector's totals are only as good as sample_pool: the VM test holds sfacctd's totals to
    first rate + (last pool - first pool) and to the packets the kernel counted.  That needs every sample above
    1-in-1 to advance the pool, which is why a pool held ahead of tc's count still creeps by 1 a sample.
    """
    view = interop.sfacctd_totals(flow_datagrams(rate, pools), tmp_path, agent=AGENT)
    assert view.problems == [], view.log
    assert view.packets_by_in_iface == {PORT: expected}
    assert view.socket_drops == 0


def held_pools(rate: int, ahead: int, samples: int) -> list[int]:
    """The pools of a source's samples at 1-in-rate, a re-sync after the first finding it `ahead` of tc's count."""
    source = DataSource(ifindex=PORT, ifname="p", pool=1000 - rate)
    binding = GroupBinding(group=1, direction="ingress", rate=rate, header=128, source=source)
    pools = []
    for seq in range(1, samples + 1):
        binding.account(seq, rate)
        pools.append(source.pool)
        if seq == 1:
            source.resync_pool(source.pool - ahead)
    return pools


def test_sfacctd_takes_back_what_a_held_pool_takes_back(tmp_path: Path):
    """Samples filling a hold at 1-in-4 (the pool 30 ahead): sfacctd counts what the pools say, 30 fewer
    packets than rate x samples, the phantom packets the estimate had run ahead by."""
    pools = held_pools(4, 30, 20)
    assert pools[-1] - pools[0] == 4 * 19 - 30
    view = interop.sfacctd_totals(flow_datagrams(4, pools), tmp_path, agent=AGENT)
    assert view.problems == [], view.log
    assert view.packets_by_in_iface == {PORT: 4 * 20 - 30}
    assert view.socket_drops == 0
