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


def test_a_gap_between_samples_of_two_rates_counts_at_the_lower_one():
    """Back-off changed the rate in place: the samples lost around the change were taken at either rate, and
    counting them at the higher one would run the pool ahead; the lower leaves it behind, where a re-sync
    from tc lifts it."""
    s = source(rate=1)
    s.account(0, 1)
    s.account(1001, 64)  # 1000 lost at 1-in-1 before the change showed, revealed by a 1-in-64 sample
    assert s.drops == 1000 and s.source.pool == 1 + 1000 + 64
    s.account(1003, 64)  # a later gap all at the new rate counts at it
    assert s.source.pool == 1 + 1000 + 64 + 64 + 64
    s.account(1005, 2)  # and back down: the lower again
    assert s.source.pool == 1 + 1000 + 64 + 64 + 64 + 2 + 2


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
    s.account(3, 10)
    assert s.source.pool == 70  # ...but while ahead, 7 of the next sample's 10 packets fill what it was over
    s.account(4, 10)
    assert s.source.pool == 80  # 60 counted by tc, then two samples of 10: it follows the kernel again


def scripted(rate: int, script: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """Play ("samples", n) and ("tc", packets) steps; (pool, tc count) after each step."""
    s = source(rate=rate)
    seq, seen = 0, []
    for step, n in script:
        if step == "samples":
            for _ in range(n):
                s.account(seq, rate)
                seq += 1
        else:
            s.sync_tc(n)
            s.source.resync_pool(s.tc_total)
        seen.append((s.source.pool, s.tc_total))
    return seen


def test_an_estimate_that_ran_ahead_converges_on_the_kernel_count():
    # the acceptance run's numbers: 1-in-4, 820 samples (3,280 by samples x rate) against tc's 3,043
    seen = scripted(4, [("samples", 820), ("tc", 3043), ("samples", 10), ("tc", 3100), ("samples", 30),
                        ("tc", 3200), ("samples", 21), ("tc", 3230)])
    pools = [pool for pool, _ in seen]
    assert pools == sorted(pools)  # never decreases
    assert seen[1] == (3280, 3043)  # ahead: kept, not lowered
    # while ahead, each sample's 4 packets fill the 237 it was over, all but the sampled packet: the pool creeps
    # by 1 a sample, never stands still (a pool-delta collector would weigh a standing one at the full rate)
    assert seen[2] == (3290, 3043)
    assert seen[3] == (3290, 3100)  # still ahead by 190: the hold is now that
    assert seen[4] == (3320, 3100)  # 30 samples: 30 counted, 90 into the hold
    assert seen[5] == (3320, 3200)
    assert seen[6] == (3341, 3200)  # 21 samples, 63 packets into the 120 held
    assert seen[7] == (3341, 3230)  # ahead by 111, no more than the 21 x 4 + 57 since the readings before
    # then the kernel passes it, and the next re-sync lifts the pool to tc's count exactly
    tail = scripted(4, [("samples", 820), ("tc", 3043), ("tc", 3500)])
    assert tail[-1] == (3500, 3500)


def test_the_pool_is_never_ahead_by_more_than_samples_added_since_the_last_resync():
    # random walk: each round the estimate runs over or under the kernel by a few samples' worth
    import random
    rng = random.Random(17)
    s = source(rate=4)
    seq = tc = 0
    for _ in range(2000):
        n = rng.randrange(0, 20)
        tc += 4 * n + rng.randrange(-12, 13) if 4 * n > 12 else 4 * n
        before = s.source.pool
        for _ in range(n):
            s.account(seq, 4)
            seq += 1
        assert s.source.pool >= before
        kernel_at_sync = s.tc_total
        s.sync_tc(tc)
        s.source.resync_pool(s.tc_total)
        # after a reading: at the kernel's count, or ahead by at most what the samples since the last
        # reading added: 4 per sample beyond that reading's count, or 1 per sample while they filled its hold
        assert s.tc_total <= s.source.pool <= max(s.tc_total, before + n, kernel_at_sync + 4 * n)
        assert s.source.pool - s.tc_total <= max(before - s.tc_total + n, 4 * n, 0)
    assert s.source.pool - s.tc_total <= 4 * 20 + 12  # bounded, not a random walk


def test_samples_taken_while_the_counter_was_read_are_not_held():
    # 1-in-1: the counters are asked for at pool 177; the kernel answers 177, and by the time the answer is
    # applied sample 178 (a packet counted after the answer) is in.  The pool is not ahead of anything: no hold,
    # and sample 179 still advances it.
    source = DataSource(ifindex=7, ifname="eno1")
    binding = GroupBinding(group=1, direction="ingress", rate=1, header=128, source=source)
    for seq in range(1, 178):
        binding.account(seq, 1)
    asked_at = source.pool
    binding.account(178, 1)
    source.resync_pool(177, asked_at)
    assert (source.pool, source.pool_hold) == (178, 0)
    binding.account(179, 1)
    assert source.pool == 179
    # the same reading applied as if it were taken now holds the one sample back: the race this avoids
    racy = DataSource(ifindex=8, ifname="eno2", pool=178)
    racy.resync_pool(177)
    assert racy.pool_hold == 1


def test_a_pool_already_ahead_when_the_counter_was_asked_for_holds_that_much():
    source = DataSource(ifindex=7, ifname="eno1", pool=120)
    source.advance(4)  # a sample while the answer was on its way
    source.resync_pool(100, 120)
    assert (source.pool, source.pool_hold) == (124, 20)


def test_a_hold_and_a_loss_credit_both_stand():
    # a re-sync lifted the pool for lost samples not yet seen (credit), a later one finds it ahead (hold):
    # the gap's packets are still not counted twice, and the rest fills the hold
    source = DataSource(ifindex=7, ifname="eno1")
    binding = GroupBinding(group=1, direction="ingress", rate=1, header=128, source=source)
    for seq in range(1, 11):
        binding.account(seq, 1)
    source.resync_pool(15)  # 5 samples lost in the kernel, not yet seen: credit 5
    source.resync_pool(13)  # a reading below: the pool (15) holds 2
    binding.account(16, 1)  # the gap of 5 shows: credited, then the sample's 1 packet goes into the hold
    assert (source.pool, source.drops, source.resync_credit, source.pool_hold) == (15, 5, 0, 1)
    binding.account(17, 1)
    binding.account(18, 1)
    assert source.pool == 16


def test_above_one_in_one_a_held_pool_still_advances_by_the_sampled_packet():
    # sfacctd weighs a sample by the pool's advance, but one whose pool stood still by its full rate: only a pool
    # that creeps by 1 a sample takes the phantom packets back from it
    source = DataSource(ifindex=7, ifname="eno1", pool=100)
    binding = GroupBinding(group=1, direction="ingress", rate=4, header=128, source=source)
    source.resync_pool(90)  # 10 ahead
    pools = []
    for seq in range(1, 6):
        binding.account(seq, 4)
        pools.append(source.pool)
    assert pools == [101, 102, 103, 106, 110]  # 3 + 3 + 3 + 1 fill the hold, then 4 a sample again
    # lost samples' packets fill the hold whole (they add no flow sample), the received one's but 1
    source.resync_pool(100)  # 10 ahead again
    binding.account(8, 4)  # 2 lost at 1-in-4 (8 packets) fill 8, the sample 2 of its 4
    assert (source.pool, source.pool_hold, source.drops) == (112, 0, 2)


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
