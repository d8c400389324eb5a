"""core.missing_ports: a named port missing at start is INFO; ERROR once only when it stays away."""

from __future__ import annotations

import logging

from hwsflow.core.missing_ports import MissingPorts


def _levels(lines):
    return [(line.level, line.message) for line in lines]


def test_a_port_missing_at_start_is_info_and_appearing_in_time_says_nothing_more():
    missing = MissingPorts(grace=60.0)
    said = missing.expect(["vf0", "eno1"], ["eno1"], now=0.0)
    assert _levels(said) == [(logging.INFO, "port vf0: no such interface; sampled as soon as it appears")]
    assert missing.check([], now=59.9) == []
    assert missing.check(["vf0"], now=30.0 + 29.9) == []
    assert missing.check([], now=1000.0) == []  # it appeared: no longer awaited


def test_a_port_still_missing_after_the_grace_is_one_error_then_info_when_it_comes():
    missing = MissingPorts(grace=60.0)
    missing.expect(["vf0"], [], now=0.0)
    assert missing.check([], now=59.0) == []
    (error,) = missing.check([], now=60.0)
    assert error.level == logging.ERROR and "port vf0: still no such interface after 60 s" in error.message
    assert missing.check([], now=61.0) == [] and missing.check([], now=600.0) == []  # said once
    (back,) = missing.check(["vf0"], now=700.0)
    assert _levels([back]) == [(logging.INFO, "port vf0: the interface is there now")]


def test_a_reload_keeps_the_clock_of_ports_still_awaited_and_forgets_dropped_ones():
    missing = MissingPorts(grace=60.0)
    missing.expect(["vf0", "vf1"], [], now=0.0)
    # reload at 50 s: vf0 is still named (no new INFO, its clock runs on), vf1 is no longer named, vf2 is new
    said = missing.expect(["vf0", "vf2"], [], now=50.0)
    assert _levels(said) == [(logging.INFO, "port vf2: no such interface; sampled as soon as it appears")]
    assert [line.message for line in missing.check([], now=60.0)] == [
        "port vf0: still no such interface after 60 s; check the name in the config"]
    assert [line.message for line in missing.check([], now=110.0)] == [
        "port vf2: still no such interface after 60 s; check the name in the config"]


def test_a_port_reported_then_dropped_from_the_config_is_forgotten():
    missing = MissingPorts(grace=1.0)
    missing.expect(["vf0"], [], now=0.0)
    assert len(missing.check([], now=2.0)) == 1
    assert missing.expect([], [], now=3.0) == []
    assert missing.check(["vf0"], now=4.0) == []  # no "there now" for a port no rule names any more
