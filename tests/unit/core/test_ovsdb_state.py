"""The OVSDB connection without a socket: what hwsflow says when Open vSwitch is absent, appears, restarts."""

from __future__ import annotations

import logging

from hwsflow.core.ovsdb_state import GRACE, TRANSITIONS, OvsdbConnection, OvsdbEvent, OvsdbState

SOCKET = "/var/run/openvswitch/db.sock"
RULES = ("ports[1] (bridge br0)",)


def test_every_state_and_event_has_a_transition():
    assert set(TRANSITIONS) == {(state, event) for state in OvsdbState for event in OvsdbEvent}


def test_no_open_vswitch_with_bridge_rules_is_said_once_naming_the_rules_and_the_socket():
    ovsdb = OvsdbConnection(SOCKET, RULES)
    line = ovsdb.unreachable("No such file or directory", 0.0)
    assert line is not None and line.level == logging.WARNING
    assert SOCKET in line.message and "ports[1] (bridge br0) selects no port" in line.message
    assert "No such file or directory" in line.message and "other rules are in effect" in line.message
    assert ovsdb.unreachable("Connection refused", 2.0) is None
    assert ovsdb.unreachable("Connection refused", 2.0 + 10 * GRACE) is None  # never there: said once
    assert ovsdb.status() == "unreachable: Connection refused"
    appeared = ovsdb.connected()
    assert appeared.level == logging.INFO and "reachable now" in appeared.message
    assert ovsdb.status() == "connected"


def test_no_open_vswitch_without_bridge_rules_is_only_info():
    line = OvsdbConnection(SOCKET, ()).unreachable("No such file or directory", 0.0)
    assert line is not None and line.level == logging.INFO


def test_a_restart_is_info_and_quiet():
    ovsdb = OvsdbConnection(SOCKET, RULES)
    assert ovsdb.connected().level == logging.INFO
    lost = ovsdb.lost("closed by the server", 10.0)
    assert lost is not None and lost.level == logging.INFO and "keep sampling as last read" in lost.message
    assert ovsdb.unreachable("Connection refused", 10.1) is None
    assert ovsdb.status() == "reconnecting: Connection refused"
    back = ovsdb.connected()
    assert back.level == logging.INFO and back.message.endswith("reconnected")


def test_a_database_that_stays_away_is_a_warning_once_after_the_grace():
    ovsdb = OvsdbConnection(SOCKET, RULES)
    ovsdb.connected()
    ovsdb.lost("closed by the server", 0.0)
    assert ovsdb.unreachable("Connection refused", GRACE - 1) is None
    line = ovsdb.unreachable("Connection refused", GRACE + 1)
    assert line is not None and line.level == logging.WARNING and "still unreachable" in line.message
    assert ovsdb.unreachable("Connection refused", GRACE + 3) is None
    ovsdb.connected()
    ovsdb.lost("closed by the server", 100.0)  # a new loss has its own grace
    assert ovsdb.unreachable("Connection refused", 101.0) is None
    assert ovsdb.unreachable("Connection refused", 100.0 + GRACE + 1) is not None


def test_a_refused_monitor_is_an_error_once():
    ovsdb = OvsdbConnection(SOCKET, RULES)
    line = ovsdb.refused("{'error': 'unknown database'}")
    assert line is not None and line.level == logging.ERROR and "unknown database" in line.message
    assert ovsdb.refused("{'error': 'unknown database'}") is None
    assert ovsdb.unreachable("Connection refused", 1.0) is None
    assert ovsdb.status().startswith("refused")
