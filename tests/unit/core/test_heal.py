"""Heal scheduling without sockets: when a port's filters are checked again, and what is logged."""

from __future__ import annotations

import logging

import pytest

from hwsflow.core.heal import (
    BLOCKED_POLL, FREED_SETTLE, HEAL_POLL, QDISC_GRACE, RETRY_FIRST, RETRY_MAX, SETTLE, STUCK_AFTER, TRANSITIONS, Due, HealEvent, HealSchedule,
    HealState,
)

VANISHED = "port p0: the ingress sample filter vanished right after it was added"
POLICED = "port p0: ingress priority 1 is held by another program's matchall filter with a police action"


def test_every_state_has_an_answer_to_every_event_it_can_meet():
    for state in HealState:
        for event in HealEvent:
            assert (state, event) in TRANSITIONS


def test_a_lost_filter_is_healed_after_the_settle_time_once_for_a_burst():
    heals = HealSchedule()
    heals.filter_lost(3, now=100.0)
    heals.filter_lost(3, now=100.1)  # the qdisc and the filter go in one burst of events
    assert heals.state(3) is HealState.SETTLING and heals.next_at() == 100.0 + SETTLE
    assert heals.due(100.0 + SETTLE - 0.01) == []
    assert heals.due(100.0 + SETTLE) == [Due(3, may_create_qdisc=True)]
    assert heals.due(200.0) == []  # taken until its outcome is reported
    assert heals.healed(3, "p0") is None  # nothing was said about it: nothing to say now
    assert heals.state(3) is HealState.IDLE and not heals.pending()


def test_another_programs_qdisc_is_waited_for_then_reinstalled_on_at_once():
    heals = HealSchedule()
    heals.owner_qdisc_lost(3, now=10.0)
    assert heals.waits_for_owner(3)
    (due,) = heals.due(10.0 + SETTLE)
    assert not due.may_create_qdisc  # its owner may be re-creating it
    heals.qdisc_missing(3, now=10.3)
    assert heals.next_at() == pytest.approx(10.3 + HEAL_POLL)
    heals.qdisc_added(3, now=10.35)  # RTM_NEWQDISC: no need to wait for the next poll
    assert heals.due(10.35) == [Due(3, may_create_qdisc=False)]


def test_after_the_grace_hwsflow_may_create_its_own_qdisc():
    heals = HealSchedule()
    heals.owner_qdisc_lost(3, now=10.0)
    heals.due(10.0 + SETTLE)
    heals.qdisc_missing(3, now=10.0 + QDISC_GRACE - 0.05)
    assert heals.due(10.0 + QDISC_GRACE + HEAL_POLL) == [Due(3, may_create_qdisc=True)]


def test_a_new_qdisc_nobody_waits_for_changes_nothing():
    heals = HealSchedule()
    heals.qdisc_added(3, now=1.0)
    assert heals.state(3) is HealState.IDLE and not heals.pending()


def test_a_race_lost_is_retried_quietly_at_info_then_healed_without_an_error():
    heals = HealSchedule()
    line = heals.failed(3, VANISHED, now=50.0)
    assert line is not None and line.level == logging.INFO and VANISHED in line.message
    assert heals.due(50.0 + RETRY_FIRST) == [Due(3, may_create_qdisc=True)]
    assert heals.failed(3, VANISHED, now=50.3) is None  # retried again without a word
    assert heals.next_at() == pytest.approx(50.3 + 2 * RETRY_FIRST)  # later each time
    heals.due(60.0)
    assert heals.healed(3, "p0") is None


def test_a_port_that_stays_unsampled_is_an_error_once_per_condition_and_its_recovery_is_said():
    heals = HealSchedule()
    now = 0.0
    lines = [heals.failed(3, VANISHED, now)]
    while now < STUCK_AFTER + 30:
        now += heals.next_at() - now  # type: ignore[operator]  # a heal is pending here, so next_at() is a time
        heals.due(now)
        lines.append(heals.failed(3, VANISHED, now))
    said = [line for line in lines if line is not None]
    assert [line.level for line in said] == [logging.INFO, logging.ERROR]
    assert "stays unsampled" in said[1].message
    assert heals.next_at() - now == RETRY_MAX  # type: ignore[operator]  # a heal is pending here, so next_at() is a time
    other = heals.failed(3, "port p0: cannot reinstall the ingress filter: No such device", now)
    assert other is not None and other.level == logging.ERROR  # another condition: said too
    recovered = heals.healed(3, "p0")
    assert recovered is not None and recovered.level == logging.INFO and "sampled again" in recovered.message


def test_a_forgotten_port_is_not_healed():
    heals = HealSchedule()
    heals.filter_lost(3, now=0.0)
    heals.forget(3)
    assert heals.due(10.0) == [] and heals.next_at() is None


def test_a_priority_held_by_another_program_is_an_error_at_once_and_only_once():
    heals = HealSchedule()
    line = heals.blocked(3, POLICED, now=10.0)
    assert line is not None and line.level == logging.ERROR and POLICED in line.message
    assert heals.state(3) is HealState.BLOCKED
    assert heals.next_at() == pytest.approx(10.0 + BLOCKED_POLL)  # a slow poll, in case an event is lost
    for now in (15.0, 20.0, 25.0):  # the polls and the periodic full check find it still there
        heals.due(now)
        assert heals.blocked(3, POLICED, now) is None
    other = heals.blocked(3, POLICED.replace("police", "mirred"), now=30.0)
    assert other is not None and other.level == logging.ERROR  # another condition: said too


def test_a_blocked_port_is_tried_again_at_once_after_a_filter_deletion_at_its_priority():
    heals = HealSchedule()
    heals.blocked(3, POLICED, now=10.0)
    heals.filter_lost(3, now=12.0)  # RTM_DELTFILTER at hwsflow's priority: the policer may be gone
    assert heals.state(3) is HealState.SETTLING
    # not the settle time of a lost filter: no qdisc is being re-created, only the priority was freed
    assert heals.next_at() == pytest.approx(12.0 + FREED_SETTLE) and FREED_SETTLE < SETTLE
    assert heals.due(12.0 + FREED_SETTLE) == [Due(3, may_create_qdisc=True)]
    recovered = heals.healed(3, "p0")
    assert recovered is not None and recovered.level == logging.INFO and "sampled again" in recovered.message
    assert heals.state(3) is HealState.IDLE and not heals.pending()


def test_a_blocked_port_still_blocked_after_the_deletion_says_nothing_new():
    heals = HealSchedule()
    heals.blocked(3, POLICED, now=10.0)
    heals.filter_lost(3, now=12.0)  # OVS replaced its policer: deleted, then added again
    heals.due(12.0 + FREED_SETTLE)
    assert heals.blocked(3, POLICED, now=12.3) is None and heals.state(3) is HealState.BLOCKED


def test_a_filter_deletion_brings_a_far_retry_forward():
    heals = HealSchedule()
    heals.failed(3, VANISHED, now=0.0)
    for now in (1.0, 3.0, 7.0, 15.0, 20.0):
        heals.due(now)
        heals.failed(3, VANISHED, now)
    assert heals.next_at() - 20.0 == RETRY_MAX  # type: ignore[operator]
    heals.filter_lost(3, now=16.0)
    assert heals.next_at() == pytest.approx(16.0 + SETTLE)


def test_a_deletion_while_a_heal_runs_is_not_lost_with_the_heals_outcome():
    """Open vSwitch's new ovs-vswitchd re-creates the qdisc, hwsflow reinstalls, and OVS's policing set-up
    deletes priority 1 while that heal is still reading its filter back: the heal succeeded, yet the filter is
    gone, so the heal the deletion asked for must still come (it was dropped, leaving the port unsampled until
    the periodic full check)."""
    heals = HealSchedule()
    heals.filter_lost(3, now=10.0)
    assert heals.due(10.0 + SETTLE) == [Due(3, may_create_qdisc=True)]
    heals.filter_lost(3, now=10.3)  # the event, read while the heal is under way
    assert heals.healed(3, "p0") is None  # nothing was reported, nothing to say
    assert heals.state(3) is HealState.SETTLING and heals.next_at() == pytest.approx(10.3 + SETTLE)
    assert heals.due(10.3 + SETTLE) == [Due(3, may_create_qdisc=True)]
    heals.healed(3, "p0")
    assert heals.state(3) is HealState.IDLE and not heals.pending()


def test_a_qdisc_lost_while_a_heal_runs_leaves_its_owner_the_grace():
    heals = HealSchedule()
    heals.filter_lost(3, now=10.0)
    heals.due(10.0 + SETTLE)
    heals.owner_qdisc_lost(3, now=10.3)
    heals.healed(3, "p0")
    assert heals.state(3) is HealState.AWAITING_QDISC
    assert heals.due(10.3 + SETTLE) == [Due(3, may_create_qdisc=False)]


def test_a_priority_freed_while_a_blocked_port_is_tried_is_tried_again_at_once():
    heals = HealSchedule()
    heals.blocked(3, POLICED, now=10.0)
    heals.due(10.0 + BLOCKED_POLL)  # the slow poll's try, under way
    heals.filter_lost(3, now=15.1)  # the policer goes meanwhile
    assert heals.blocked(3, POLICED, now=15.2) is None  # that try still found it
    assert heals.next_at() == pytest.approx(15.1 + FREED_SETTLE)  # not the next slow poll, 5 s on


def test_a_retry_never_puts_off_the_heal_an_event_asked_for_meanwhile():
    heals = HealSchedule()
    heals.failed(3, VANISHED, now=0.0)
    heals.due(RETRY_FIRST)
    heals.filter_lost(3, now=0.3)
    heals.failed(3, VANISHED, now=0.35)
    assert heals.next_at() == pytest.approx(0.3 + SETTLE)


def test_a_deletion_during_the_periodic_full_check_is_not_lost_either():
    heals = HealSchedule()
    heals.began(3, now=20.0)  # the full check heals every port, scheduled or not
    heals.filter_lost(3, now=20.1)
    heals.healed(3, "p0")
    assert heals.due(20.1 + SETTLE) == [Due(3, may_create_qdisc=True)]


def test_a_periodic_heal_without_events_leaves_nothing_scheduled():
    heals = HealSchedule()
    heals.began(3, now=20.0)
    heals.healed(3, "p0")
    assert heals.state(3) is HealState.IDLE and not heals.pending() and heals.next_at() is None
