"""Sampling-rate back-off without sockets: scripted packet counters and time, the rates it decides."""

from __future__ import annotations

import logging
import math

import pytest

from hwsflow.core.backoff import (
    BACKOFF_TARGET, LOSS_MEMORY, LOSS_SETTLE, RECOVER_BELOW, TRANSITIONS, BackoffEvent, BackoffPolicy, BackoffState,
    Reading, rate_for, water_level,
)

A, B, C = (1, "ingress"), (2, "ingress"), (2, "egress")


class Host:
    """Filters whose packet counters grow at a scripted packets/s, ticked once a second."""

    def __init__(self, policy: BackoffPolicy, configured: dict, limits: dict | None = None) -> None:
        self.policy = policy
        self.configured = dict(configured)
        self.limits = limits or {}
        self.packets = dict.fromkeys(configured, 0)
        self.pps = dict.fromkeys(configured, 0.0)
        self.drops = dict.fromkeys(configured, 0)
        self.overruns = 0
        self.backlog: dict = {}  # key -> the rate of the samples the agent still reads (queued before a change)
        self.now = 1000.0
        self.changes: list = []

    def readings(self) -> list[Reading]:
        return [Reading(key, f"p{key[0]}", self.configured[key], self.packets[key], self.drops[key],
                        self.limits.get(key), self.backlog.get(key, self.rate(key))) for key in self.configured]

    def tick(self, seconds: int = 1) -> list:
        out = []
        for _ in range(seconds):
            self.now += 1.0
            for key in self.packets:
                self.packets[key] += int(self.pps[key])
            out += self.policy.tick(self.now, self.readings(), self.overruns)
        self.changes += out
        return out

    def rate(self, key) -> int:
        return self.policy.rate(key, self.configured[key])

    def load(self) -> float:
        return sum(self.pps[k] / self.rate(k) for k in self.configured)


def test_every_state_has_an_answer_to_every_event_it_can_meet():
    for state in BackoffState:
        for event in (BackoffEvent.OVER, BackoffEvent.STEADY, BackoffEvent.CALM, BackoffEvent.RESTORED):
            assert (state, event) in TRANSITIONS
    assert (BackoffState.RECOVERING, BackoffEvent.STEPPED) in TRANSITIONS


def test_water_level_leaves_the_small_and_cuts_the_big():
    assert water_level([10, 20], 100) == math.inf
    assert water_level([10, 1000, 2000], 310) == pytest.approx(150)  # 10 + 150 + 150
    assert water_level([500, 500], 500) == pytest.approx(250)


def test_rate_for_never_goes_below_the_configured_rate_nor_above_u32():
    assert rate_for(1000, 1, 100) == 10
    assert rate_for(1001, 1, 100) == 11
    assert rate_for(10, 400, 100) == 400
    assert rate_for(1e12, 1, 1e-3) == 0xFFFFFFFF
    assert rate_for(5, 1, 0) == 0xFFFFFFFF


def test_a_load_within_the_budget_changes_nothing():
    host = Host(BackoffPolicy(budget=1000, hold=10), {A: 1, B: 10})
    host.pps = {A: 400.0, B: 5000.0}  # 400 + 500 samples/s: under 1000
    assert host.tick(60) == []
    assert host.rate(A) == 1 and host.rate(B) == 10
    assert host.policy.state(A) is BackoffState.CONFIGURED and host.policy.reason(A) is None


def test_a_flood_backs_off_the_port_that_sends_most_within_two_ticks_and_once():
    host = Host(BackoffPolicy(budget=1000, hold=10), {A: 1, B: 1})
    host.pps = {A: 50.0, B: 0.0}
    host.tick(3)
    host.pps[B] = 100_000.0  # the flood starts
    first = host.tick(2)
    assert len(first) == 1
    (change,) = first
    assert change.key == B and change.old == 1 and change.new > 1
    assert host.rate(A) == 1  # the small one keeps its rate
    assert host.load() <= 1000 and host.load() == pytest.approx(BACKOFF_TARGET * 1000, rel=0.01)
    assert "over the budget of 1000" in change.reason and "100050 samples/s" in change.reason
    line = change.log_line()
    assert line.level == logging.INFO and "1-in-1 -> 1-in-" in line.message and "p2 ingress" in line.message
    assert host.policy.reason(B) == change.reason
    # the flood goes on at the same pace: nothing more changes, however long
    assert host.tick(120) == []


def test_a_growing_flood_backs_off_further_and_never_oscillates():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    rates = []
    for pps in (10_000, 20_000, 40_000, 80_000, 60_000, 70_000, 65_000):
        host.pps[B] = float(pps)
        host.tick(15)
        rates.append(host.rate(B))
    assert rates == sorted(rates[:4]) + rates[4:]  # up while it grows
    assert all(host.load() <= 1000 for _ in (0,))
    ups = [c for c in host.changes if c.new > c.old]
    downs = [c for c in host.changes if c.new < c.old]
    assert len(ups) == 4 and downs == []  # a dip from 80k to 60k is inside the band: no step back


def test_the_rate_returns_to_the_configured_one_only_after_the_hold():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 2})
    host.pps[B] = 50_000.0
    host.tick(2)
    backed = host.rate(B)
    assert backed > 2
    host.pps[B] = 100.0  # the flood stops
    assert host.tick(10) == []  # calm, but not yet for the whole hold (the first calm tick starts it)
    assert host.policy.state(B) is BackoffState.RECOVERING
    (change,) = host.tick(1)
    assert change.old == backed and change.new == 2 and "under half the budget" in change.reason
    assert host.policy.state(B) is BackoffState.CONFIGURED and host.policy.reason(B) is None
    assert host.tick(60) == []


def test_a_load_back_over_half_the_budget_restarts_the_hold():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    host.pps[B] = 50_000.0
    host.tick(2)
    backed = host.rate(B)
    host.pps[B] = 100.0
    host.tick(8)
    host.pps[B] = 0.6 * 1000 * backed  # a second wave, between half the budget and the budget
    host.tick(1)
    assert host.policy.state(B) is BackoffState.BACKED_OFF
    host.pps[B] = 100.0
    assert host.tick(10) == []  # a full hold again from here
    assert host.tick(1)[0].new == 1


def test_a_step_back_stops_where_the_load_fits_and_steady_traffic_then_stays():
    host = Host(BackoffPolicy(budget=1000, hold=5), {B: 1})
    host.pps[B] = 100_000.0
    host.tick(2)
    assert host.rate(B) == math.ceil(100_000 / 750)
    host.pps[B] = 20_000.0  # a fifth: 150 samples/s at the backed-off rate, under half the budget
    host.tick(6)
    assert host.rate(B) == math.ceil(20_000 / 750)  # back as far as keeps the load at 3/4 of the budget
    assert host.policy.state(B) is BackoffState.BACKED_OFF
    before = len(host.changes)
    host.tick(300)
    assert len(host.changes) == before  # 750 samples/s: inside the band, for good


def test_every_step_back_is_a_big_one_so_a_rate_never_creeps():
    # calm is under half the budget and a step lands at three quarters of it: a step lowers N by a third or more
    for share in (0.05, 0.2, 0.4, 0.49, 0.499):
        host = Host(BackoffPolicy(budget=1000, hold=5), {B: 1})
        host.pps[B] = 100_000.0
        host.tick(2)
        backed = host.rate(B)
        host.pps[B] = share * 1000 * backed
        host.tick(60)
        downs = [c for c in host.changes if c.new < c.old]
        assert len(downs) == 1 and downs[0].new <= math.ceil(downs[0].old * 2 / 3), (share, downs)


def test_a_ports_own_budget_backs_off_that_port_alone():
    host = Host(BackoffPolicy(budget=10_000, hold=10), {A: 1, B: 1}, limits={B: 100})
    host.pps = {A: 2000.0, B: 1000.0}  # the total fits the agent's budget; B is over its own
    host.tick(2)
    assert host.rate(A) == 1
    assert host.rate(B) == math.ceil(1000 / (BACKOFF_TARGET * 100))
    (change,) = host.changes
    assert "over its max_samples_per_s of 100" in change.reason
    host.pps[B] = 10.0
    host.tick(11)
    assert host.rate(B) == 1


def test_both_directions_of_a_port_are_filters_of_their_own():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1, C: 1})
    host.pps = {B: 10_000.0, C: 100.0}
    host.tick(2)
    assert host.rate(B) > 1 and host.rate(C) == 1


def test_kernel_loss_within_the_budget_lowers_it_for_a_while():
    host = Host(BackoffPolicy(budget=10_000, hold=10), {B: 1})
    host.pps[B] = 2000.0
    host.tick(3)
    assert host.rate(B) == 1
    host.drops[B] += 300  # the agent cannot take 2000 samples/s on this host now
    assert host.tick(1) == []  # one tick of losses could be a burst
    host.drops[B] += 300
    (change,) = host.tick(1)
    assert change.new == math.ceil(2000 / (BACKOFF_TARGET * 2000 * 0.5))
    assert "the kernel lost samples" in change.reason and "300 sequence gaps" in change.reason
    # the rate lowered the load under the lowered budget; the lowered budget holds the rate until it expires,
    # then the load is far under half the budget
    host.tick(int(LOSS_MEMORY) - 10)
    assert host.rate(B) == change.new
    host.tick(30)
    assert host.rate(B) == 1


def test_losses_while_samples_of_the_old_rate_are_still_read_are_not_counted():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    host.pps[B] = 30_000.0
    host.tick(2)
    backed = host.rate(B)
    host.backlog[B] = 1  # the socket still holds samples taken at 1-in-1: it overflows on them for a while
    for _ in range(5):
        host.overruns += 5000
        host.drops[B] += 5000
        assert host.tick(1) == []
    del host.backlog[B]  # samples of the new rate now: the tick that sees them still measured the old ones' loss
    host.overruns += 700
    assert host.tick(1) == []
    assert host.tick(20) == [] and host.rate(B) == backed  # no loss since: nothing more
    host.overruns += 700  # losses with samples of the new rate read on both sides: the host cannot take it
    assert host.tick(1) == []
    host.overruns += 700
    (change,) = host.tick(1)
    assert change.new > backed and "socket overruns" in change.reason


def test_a_change_whose_samples_never_show_settles_after_a_while():
    host = Host(BackoffPolicy(budget=1000, hold=100), {B: 1})
    host.pps[B] = 30_000.0
    host.tick(2)
    host.backlog[B] = 1
    host.tick(int(LOSS_SETTLE) + 1)
    host.overruns += 700
    host.tick(1)
    host.overruns += 700
    assert host.tick(1)[0].new > host.changes[0].new


def test_socket_overruns_count_as_loss_too():
    host = Host(BackoffPolicy(budget=10_000, hold=10), {A: 1, B: 1})
    host.pps = {A: 100.0, B: 3000.0}
    host.tick(3)
    host.overruns += 1000
    assert host.tick(1) == []
    host.overruns += 1000
    changes = host.tick(1)
    assert [c.key for c in changes] == [B]  # the one that sends the most
    assert "1000 socket overruns" in changes[0].reason


def test_loss_at_a_tiny_load_is_not_ours_to_fix():
    host = Host(BackoffPolicy(budget=10_000, hold=10), {B: 1})
    host.pps[B] = 20.0
    host.tick(3)
    host.overruns += 5000  # a foreign group flooding the socket
    assert host.tick(5) == []


def test_a_reinstalled_filter_counting_from_zero_is_no_measurement():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    host.pps[B] = 500.0
    host.tick(3)
    host.packets[B] = 0  # heal reinstalled it
    assert host.tick(1) == []
    assert host.policy.state(B) is BackoffState.CONFIGURED


def test_unread_counters_keep_the_rate():
    policy = BackoffPolicy(budget=1000, hold=1)
    policy.tick(1.0, [Reading(B, "p2", 1, 0)])
    assert policy.tick(2.0, [Reading(B, "p2", 1, 100_000)])[0].new > 1
    assert policy.tick(3.0, [Reading(B, "p2", 1, None)]) == []
    assert policy.tick(30.0, [Reading(B, "p2", 1, None)]) == []
    assert policy.rate(B, 1) > 1


def test_a_port_gone_is_forgotten():
    policy = BackoffPolicy(budget=1000, hold=1)
    policy.tick(1.0, [Reading(B, "p2", 1, 0)])
    policy.tick(2.0, [Reading(B, "p2", 1, 100_000)])
    assert policy.active()
    policy.tick(3.0, [])
    assert not policy.active() and policy.rate(B, 1) == 1


def test_a_new_configured_rate_above_the_backed_off_one_takes_over():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    host.pps[B] = 10_000.0
    host.tick(2)
    assert host.rate(B) == 14
    host.configured[B] = 100  # a reload
    assert host.tick(1) == []
    assert host.rate(B) == 100 and host.policy.state(B) is BackoffState.CONFIGURED


def test_a_new_configured_rate_below_the_backed_off_one_keeps_the_back_off():
    host = Host(BackoffPolicy(budget=1000, hold=10), {B: 1})
    host.pps[B] = 10_000.0
    host.tick(2)
    host.configured[B] = 4
    host.tick(1)
    assert host.rate(B) == 14
    host.pps[B] = 0.0
    host.tick(12)
    assert host.rate(B) == 4


def test_turning_back_off_off_restores_every_configured_rate_at_once():
    host = Host(BackoffPolicy(budget=1000, hold=10), {A: 1, B: 1})
    host.pps = {A: 10_000.0, B: 10_000.0}
    host.tick(2)
    assert host.rate(A) > 1 and host.rate(B) > 1
    host.policy.configure(0, 10)
    changes = host.tick(1)
    assert sorted(c.key for c in changes) == [A, B]
    assert all(c.new == 1 and "turned off" in c.reason for c in changes)
    assert host.tick(30) == []


def test_the_recovery_threshold_sits_under_the_back_off_target():
    # a step back lands at BACKOFF_TARGET: inside the band between RECOVER_BELOW and the budget
    assert RECOVER_BELOW < BACKOFF_TARGET < 1


def test_one_burst_of_losses_is_no_load_the_agent_cannot_take():
    # the agent was stopped a moment (SIGSTOP, a slow disk): its socket overflowed once, then all is well
    host = Host(BackoffPolicy(budget=10_000, hold=10), {B: 1})
    host.pps[B] = 600.0
    host.tick(3)
    host.drops[B] += 2864
    host.overruns += 2864
    assert host.tick(30) == [] and host.rate(B) == 1


def test_an_idle_agent_skips_the_counters_and_starts_from_a_new_baseline():
    policy = BackoffPolicy(budget=1000, hold=10)
    assert policy.idle(0.0, 100.0) and not policy.idle(0.0, 300.0)  # a quarter of the budget
    policy.tick(1.0, [Reading(B, "p2", 1, 0)])
    policy.pause()  # quiet for a while: no readings
    # the first reading after the pause is a baseline: 100,000 packets over 100 s of quiet are not 1,000/s
    assert policy.tick(101.0, [Reading(B, "p2", 1, 100_000, drops=5000)], overruns=5000) == []
    (change,) = policy.tick(102.0, [Reading(B, "p2", 1, 150_000, drops=5000)], overruns=5000)
    assert change.new == 67 and "over the budget" in change.reason  # 50,000 packets/s from here
    assert not policy.idle(103.0, 10.0)  # backed off: the counters are read until the rate is back


def test_back_off_off_is_idle_only_with_nothing_to_restore():
    policy = BackoffPolicy(budget=0, hold=10)
    assert not policy.idle(0.0, 0.0)  # the agent decides that case itself: off and nothing backed off


def test_counters_read_too_close_together_are_no_rate():
    policy = BackoffPolicy(budget=1000, hold=10)
    policy.tick(1.0, [Reading(B, "p2", 1, 0)])
    policy.tick(2.0, [Reading(B, "p2", 1, 500)])  # 500/s
    # a late tick then one on time: 200 packets in 0.1 s would read as 2,000/s
    assert policy.tick(2.1, [Reading(B, "p2", 1, 700)]) == []
    assert policy.tick(3.0, [Reading(B, "p2", 1, 1200)]) == []  # 700 in 1 s from the last kept reading
