"""Counter records built from link state, read back by the reference decoder."""

from hwsflow.wire import sflow_ref
from hwsflow.core.counters import UNKNOWN, LinkState, counter_records
from hwsflow.wire.sflow import DatagramBuilder

STATS = {
    "rx_packets": 1000, "multicast": 10, "rx_bytes": 5 << 32, "rx_dropped": 3, "rx_errors": 2,
    "tx_packets": 900, "tx_bytes": 123456, "tx_dropped": 1, "tx_errors": 0,
    "rx_frame_errors": 4, "rx_crc_errors": 5, "tx_window_errors": 6, "rx_length_errors": 7,
}


def decode(link: LinkState) -> dict:
    builder = DatagramBuilder("192.0.2.1")
    records, count = counter_records(link)
    builder.add_counter_sample(1000, 7, 0, link.ifindex, records, count)
    builder.flush(1000)
    (datagram,) = builder.take()
    (sample,) = sflow_ref.parse_datagram(datagram)["samples"]
    return sample


def test_ethernet_port_gets_three_records():
    link = LinkState(70000, "enp4s0f0_1", 1, True, True, False, 25_000_000_000, "full", STATS)
    sample = decode(link)
    assert sample["kind"] == "counters" and sample["sequence_number"] == 7
    generic, ethernet, name = sample["records"]
    assert generic["ifIndex"] == 70000 and generic["ifType"] == 6
    assert generic["ifSpeed"] == 25_000_000_000 and generic["ifDirection"] == 1 and generic["ifStatus"] == 3
    assert generic["ifInOctets"] == 5 << 32  # 64-bit octets survive
    assert (generic["ifInUcastPkts"], generic["ifInMulticastPkts"], generic["ifInBroadcastPkts"]) == (990, 10, UNKNOWN)
    assert (generic["ifInDiscards"], generic["ifInErrors"], generic["ifOutUcastPkts"]) == (3, 2, 900)
    assert ethernet["dot3StatsFCSErrors"] == 5 and ethernet["dot3StatsLateCollisions"] == 6
    assert ethernet["dot3StatsSymbolErrors"] == UNKNOWN
    assert name["name"] == "enp4s0f0_1"


def test_non_ethernet_port_has_no_ethernet_record_and_unknown_speed():
    link = LinkState(1, "lo", 772, True, False, True, stats={})
    generic, name = decode(link)["records"]
    assert generic["ifType"] == 24 and generic["ifSpeed"] == 0 and generic["ifDirection"] == 0
    assert generic["ifStatus"] == 1 and generic["ifPromiscuousMode"] == 1
    assert name["name"] == "lo"
