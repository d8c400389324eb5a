"""What hwsflow says about bridges: one a rule names that is missing, Open vSwitch's own sFlow on a sampled one."""

from __future__ import annotations

import logging

from hwsflow.core.ovs_bridges import OvsSflow
from hwsflow.core.ovs_notices import BridgeNotices, sflow_note

SFLOW = OvsSflow(("192.0.2.9:6343",), 64)


def levels(lines):
    return [line.level for line in lines]


def test_a_missing_bridge_is_info_then_an_error_once_after_the_grace_then_info_when_created():
    notices = BridgeNotices(grace=60.0)
    first = notices.bridges({"br9": "ports[1]"}, ["br0"], 0.0)
    assert levels(first) == [logging.INFO] and "ports[1]: Open vSwitch has no bridge br9" in first[0].message
    assert notices.missing() == ["br9"]
    assert notices.bridges({"br9": "ports[1]"}, ["br0"], 30.0) == []
    late = notices.bridges({"br9": "ports[1]"}, ["br0"], 61.0)
    assert levels(late) == [logging.ERROR] and "ovs-vsctl list-br" in late[0].message
    assert notices.bridges({"br9": "ports[1]"}, ["br0"], 120.0) == []
    created = notices.bridges({"br9": "ports[1]"}, ["br0", "br9"], 130.0)
    assert levels(created) == [logging.INFO] and "created" in created[0].message
    assert notices.missing() == []


def test_a_bridge_created_within_the_grace_needs_no_second_line():
    notices = BridgeNotices(grace=60.0)
    notices.bridges({"br9": "ports[1]"}, [], 0.0)
    assert notices.bridges({"br9": "ports[1]"}, ["br9"], 5.0) == []


def test_a_rule_removed_by_a_reload_forgets_its_bridge():
    notices = BridgeNotices(grace=60.0)
    notices.bridges({"br9": "ports[1]"}, [], 0.0)
    assert notices.bridges({}, [], 100.0) == [] and notices.missing() == []


def test_open_vswitch_sflow_on_a_sampled_bridge_is_a_warning_once_and_its_removal_info():
    notices = BridgeNotices()
    warned = notices.sflow({"br0": SFLOW, "br1": None})
    assert levels(warned) == [logging.WARNING]
    assert "two exports of the same traffic" in warned[0].message and "not offloaded to tc" in warned[0].message
    assert "ovs-vsctl clear bridge br0 sflow" in warned[0].message and "192.0.2.9:6343, 1-in-64" in warned[0].message
    assert notices.sflow({"br0": SFLOW}) == []
    gone = notices.sflow({"br0": None})
    assert levels(gone) == [logging.INFO] and "off now" in gone[0].message
    assert notices.sflow({"br0": None}) == []


def test_a_bridge_no_longer_sampled_is_warned_again_if_it_comes_back():
    notices = BridgeNotices()
    notices.sflow({"br0": SFLOW})
    assert notices.sflow({}) == []
    assert levels(notices.sflow({"br0": SFLOW})) == [logging.WARNING]


def test_the_note_without_a_rate():
    assert "Open vSwitch's default rate" in sflow_note("br0", OvsSflow((), None))
