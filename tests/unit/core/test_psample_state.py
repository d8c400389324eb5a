"""psample's absence without sockets: INFO until hwsflow's own filters could have loaded it, then ERROR once."""

from __future__ import annotations

import logging

from hwsflow.core.psample_state import RECEIVE_ONLY_GRACE, TRANSITIONS, PsampleAvailability, PsampleEvent, PsampleState

REASON = "the kernel has no 'psample' generic netlink family; load it with `modprobe psample`"


def test_absent_at_start_then_loaded_by_the_first_filter_logs_no_error():
    psample = PsampleAvailability(started=0.0)
    first = psample.absent(REASON, 0.0, own_filters=False, receive_only=False, retry=2.0)
    assert first is not None and first.level == logging.INFO and "modprobe" not in first.message
    assert psample.absent(REASON, 2.0, own_filters=False, receive_only=False, retry=2.0) is None
    joined = psample.joined()
    assert joined is not None and joined.level == logging.INFO and joined.message == "psample is available now"
    assert psample.state is PsampleState.JOINED


def test_still_absent_with_a_filter_installed_is_an_error_naming_modprobe_once():
    psample = PsampleAvailability(started=0.0)
    psample.absent(REASON, 0.0, own_filters=False, receive_only=False, retry=2.0)
    error = psample.absent(REASON, 0.5, own_filters=True, receive_only=False, retry=2.0)
    assert error is not None and error.level == logging.ERROR
    assert "modprobe psample" in error.message and "retrying every 2 s" in error.message
    assert psample.absent(REASON, 2.5, own_filters=True, receive_only=False, retry=2.0) is None
    assert psample.joined() is not None  # loaded by hand at last: said at INFO


def test_present_at_once_says_nothing():
    psample = PsampleAvailability(started=0.0)
    assert psample.joined() is None


def test_receive_only_ports_wait_a_grace_for_others_rules_to_load_it():
    psample = PsampleAvailability(started=0.0)
    line = psample.absent(REASON, 1.0, own_filters=False, receive_only=True, retry=2.0)
    assert line is not None and line.level == logging.INFO
    assert psample.absent(REASON, RECEIVE_ONLY_GRACE - 1, own_filters=False, receive_only=True, retry=2.0) is None
    late = psample.absent(REASON, RECEIVE_ONLY_GRACE, own_filters=False, receive_only=True, retry=2.0)
    assert late is not None and late.level == logging.ERROR


def test_joined_is_final():
    assert not any(state is PsampleState.JOINED for state, _ in TRANSITIONS)
    assert all((state, PsampleEvent.JOINED) in TRANSITIONS for state in PsampleState if state is not PsampleState.JOINED)
