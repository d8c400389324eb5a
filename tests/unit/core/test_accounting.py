"""Data-source accounting, group allocation and agent-address election."""

import ipaddress

import pytest

from hwsflow.core.datasource import DataSource, GroupBinding
from hwsflow.core.groups import GroupTable
from hwsflow.core.identity import agent_address, elect
from hwsflow.wire.netlink import attr, build_getfamily, parse_family_reply, parse_proc_netlink_drops, NLMSG_HDR, GENL_HDR


def source(rate=10) -> GroupBinding:
    return GroupBinding(group=1000, direction="ingress", rate=rate, header=128, source=DataSource(70000, "p"))


def test_consecutive_group_seqs_count_no_drops():
    s = source()
    for seq in range(5):
        s.account(seq, 10)
    assert (s.source.flow_seq, s.source.samples, s.source.drops, s.source.pool) == (5, 5, 0, 50)


def test_group_seq_gap_counts_drops_and_pool():
    s = source()
    s.account(0, 10)
    s.account(4, 10)  # 1, 2, 3 lost
    assert s.drops == s.source.drops == 3
    assert s.source.pool == 50  # lost samples stood for packets that passed the action too
    assert s.source.flow_seq == 2


def test_group_seq_wraps():
    s = source()
    s.account(0xFFFFFFFE, 10)
    s.account(0xFFFFFFFF, 10)
    s.account(0, 10)
    assert s.drops == 0


def test_all_zero_group_seq_invents_no_gap():
    s = source()  # mlx5 hardware samples: GROUP_SEQ always 0
    for _ in range(3):
        s.account(0, 10)
    assert s.drops == 0


def test_group_seq_going_back_is_a_reset_not_a_loss():
    s = source()
    s.account(100, 10)
    s.account(0, 10)  # the group was destroyed and recreated
    assert s.drops == 0


def test_group_allocation_from_base_reuses_freed_ids():
    table = GroupTable(base=1000)
    a = table.allocate(5, "ingress")
    b = table.allocate(5, "egress")
    c = table.allocate(9, "ingress")
    assert (a, b, c) == (1000, 1001, 1002)
    assert table.allocate(5, "ingress") == 1000
    binding = table.bind(5, "p", "ingress", 10, 128)
    assert binding.group == 1000 and table.get(1000).source.ifindex == 5
    assert table.bind(5, "p", "egress", 10, 128).source is binding.source  # one data source per port
    assert table.release(5, "ingress").group == 1000
    assert table.get(1000) is None and 5 in table.sources
    table.release(5, "egress")
    assert 5 not in table.sources
    assert table.allocate(11, "ingress") == 1000


ADDRS = [("lo", "127.0.0.1"), ("lo", "::1"), ("eth0", "fe80::1"), ("eth0", "2001:db8::5"), ("eth1", "10.0.0.9")]


def test_election_prefers_ipv4_then_global_ipv6_never_loopback():
    assert elect(ADDRS) == ipaddress.ip_address("10.0.0.9")
    assert elect([a for a in ADDRS if a[0] != "eth1"]) == ipaddress.ip_address("2001:db8::5")
    assert elect([("lo", "127.0.0.1"), ("lo", "::1")]) is None


def test_agent_setting_ip_or_interface():
    assert agent_address("192.0.2.7", ADDRS) == ipaddress.ip_address("192.0.2.7")
    assert agent_address("eth0", ADDRS) == ipaddress.ip_address("2001:db8::5")
    with pytest.raises(ValueError, match="eth9"):
        agent_address("eth9", ADDRS)


def test_getfamily_request_and_reply():
    request = build_getfamily("psample", seq=9)
    assert request[NLMSG_HDR.size + GENL_HDR.size + 4:].rstrip(b"\0") == b"psample"
    groups = attr(7 | 0x8000, attr(1, attr(1, b"config\0") + attr(2, (5).to_bytes(4, "little")))
                  + attr(2, attr(1, b"packets\0") + attr(2, (6).to_bytes(4, "little"))))
    body = GENL_HDR.pack(1, 2, 0) + attr(1, (0x1C).to_bytes(2, "little")) + attr(2, b"psample\0") + groups
    reply = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), 0x10, 0, 9, 0) + body
    family = parse_family_reply(reply, "psample")
    assert (family.id, family.groups) == (0x1C, {"config": 5, "packets": 6})


def test_proc_netlink_drops_column():
    text = (
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "ffff8881 16  4242       00000000 0        0        0     2        17       123456\n"
        "ffff8882 0   1          00000000 0        0        0     2        0        99\n"
    )
    assert parse_proc_netlink_drops(text, 123456) == 17
    assert parse_proc_netlink_drops(text, 5) is None


def test_pool_catches_up_with_the_kernel_counter_and_never_goes_back():
    s = source(rate=10)
    s.account(0, 10)
    s.account(1, 10)
    assert s.source.pool == 20
    s.sync_tc(57)
    s.source.resync_pool(s.tc_total)
    assert s.source.pool == 57  # the kernel's own count replaces the estimate
    s.account(2, 10)
    assert s.source.pool == 67  # between syncs: the rate per sample
    s.sync_tc(60)
    s.source.resync_pool(s.tc_total)
    assert s.source.pool == 67  # an estimate ahead of the kernel is kept: the pool never decreases


def test_tc_counter_restart_after_reinstall_keeps_counting():
    s = source()
    s.sync_tc(100)
    s.sync_tc(30)  # the filter was deleted (say by Open vSwitch) and reinstalled
    s.sync_tc(50)
    assert s.tc_total == 150


def test_a_loss_already_counted_by_a_resync_is_not_counted_again():
    # rate 1: 10 samples seen, then 5 lost; the kernel's counter (15 packets) is read before the next
    # sample reveals the gap, and that sample must bring the pool to 16, not 21
    source = DataSource(ifindex=7, ifname="eno1")
    binding = GroupBinding(group=1, direction="ingress", rate=1, header=128, source=source)
    for seq in range(1, 11):
        binding.account(seq, 1)
    source.resync_pool(15)
    binding.account(16, 1)
    assert (source.pool, source.drops) == (16, 5)
    # a later loss that no re-sync saw counts in full
    binding.account(20, 1)
    assert (source.pool, source.drops) == (20, 8)
