"""Next to the real Open vSwitch (issue 15): OVS forwards every ping through tc while hwsflow samples its
ports 1-in-1, through hwsflow started after OVS and before it, OVS restarted and killed, a port re-added,
the datapath flows flushed, a policer set and removed, and OVS's own sFlow turned on and off.

The guest side is tests/vm/scenarios_ovs.py, run in the same boot as every other scenario.  The times
until hwsflow samples again are printed there (the VM log) and checked here against generous bounds:
the guest runs under software emulation on a shared machine.
"""

from __future__ import annotations

from collections import Counter

import pytest

from hwsflow.wire import sflow_ref
from tests.vm.scenarios_ovs import PHASES, PINGS, ipv4_flow_places

# s from another program freeing hwsflow's priority (its filter deleted, its qdisc re-created, its policer
# removed) to hwsflow's filter back, under emulation on a shared machine: measured 0.2-1.4 s at load 3 and up
# to 3.2 s at load 8.  A deletion lost with a heal's outcome waited for the periodic full check (6.3 s
# measured, up to 10 s): that stays out.
SAMPLED_AGAIN_BOUND = 5.0
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
POLICED = "policer_set"
OVS_SFLOW = "ovs_sflow_on"
OVS_FIRST = PHASES[:-1]  # on Open vSwitch's own ingress qdiscs
# the phases whose disturbance deletes hwsflow's filter on a port: it must be back, and soon
DISTURBED = {
    "ovs_restart": ("ovp0", "ovp1"), "ovs_killed_and_started": ("ovp0", "ovp1"), "port_readded": ("ovp1",),
    "policer_removed": ("ovp0",), "ovs_after_hwsflow": ("ovp0", "ovp1"),
}


@pytest.fixture(scope="module")
def ovs(vm) -> dict:
    assert "ovs" in vm, vm["errors"]
    return vm["ovs"]


def _echo(header: bytes) -> tuple[int, int, int] | None:
    """(ICMP type, id, sequence) of an IPv4 echo frame's sampled header, else None."""
    if len(header) < 14 + 20 + 8 or header[12:14] != b"\x08\x00" or header[14 + 9] != 1:
        return None
    icmp = 14 + (header[14] & 0x0F) * 4
    kind = header[icmp]
    if kind not in (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST):
        return None
    return kind, int.from_bytes(header[icmp + 4:icmp + 6], "big"), int.from_bytes(header[icmp + 6:icmp + 8], "big")


@pytest.fixture(scope="module")
def exported(ovs) -> Counter:
    """How often each (port, ICMP type, id, sequence) was exported as a flow sample."""
    names = {index: port for port, index in ovs["ifindex"].items()}
    out: Counter = Counter()
    for data in ovs["datagrams"]:
        for sample in sflow_ref.parse_datagram(bytes.fromhex(data))["samples"]:
            if sample["kind"] == "flow":
                echo = _echo(sample["records"][0]["header"])
                if echo is not None:
                    out[(names.get(sample["source_id_index"]), *echo)] += 1
    return out


def test_the_scenario_ran(vm, ovs):
    assert not [e for e in vm["errors"] if "scenario_ovs" in e], vm["errors"]
    assert list(ovs["phases"]) == list(PHASES)


def test_ovs_alone_forwards_every_ping_once_warmed_up(ovs):
    """The baseline: before hwsflow runs, OVS's first frames may be lost (its handler thread stalls under
    emulation), the next ping is answered in full."""
    assert ovs["ping_warm_up"]["answered"] == PINGS  # ping -w sends until that many are answered
    assert ovs["ping_ovs_alone"] == {"id": ovs["ping_ovs_alone"]["id"], "sent": PINGS, "answered": PINGS}


@pytest.mark.parametrize("name", PHASES)
def test_ovs_forwards_every_ping(ovs, name):
    ping = ovs["phases"][name]["ping"]
    assert ping["sent"] == PINGS and ping["answered"] == PINGS, ping


@pytest.mark.parametrize("name", PHASES)
def test_every_frame_forwarded_on_a_sampled_port_is_exported_once(ovs, exported, name):
    """Echo requests enter ovp0 from ovsa, replies enter ovp1 from ovsb (static neighbours: no other
    frame); 1-in-1 at ingress, so each is one flow sample of its port, never two, never none."""
    ident = ovs["phases"][name]["ping"]["id"]
    for port, kind in (("ovp0", ICMP_ECHO_REQUEST), ("ovp1", ICMP_ECHO_REPLY)):
        counts = [exported[(port, kind, ident, seq)] for seq in range(1, PINGS + 1)]
        # while OVS's policer holds ovp0's priority, ovp0 is honestly unsampled
        assert counts == [0 if (name, port) == (POLICED, "ovp0") else 1] * PINGS, (port, counts)
    assert not [key for key in exported if key[2] == ident and key[:2] not in
                (("ovp0", ICMP_ECHO_REQUEST), ("ovp1", ICMP_ECHO_REPLY))]  # nothing counted twice elsewhere


@pytest.mark.parametrize("name", PHASES)
def test_ovs_flows_stay_in_tc(ovs, name):
    phase = ovs["phases"][name]
    places = ipv4_flow_places(phase["flows"])
    if name == OVS_SFLOW:
        # OVS's own sample action has no tc form: OVS keeps those flows in its kernel datapath
        assert places["tc"] == 0 and places["ovs"] >= 2, phase["flows"]
    else:
        assert places["tc"] >= 2 and places["ovs"] == 0, phase["flows"]  # one each way, offloaded
        assert all(count > 0 for count in phase["flowers"].values()), phase["flowers"]


@pytest.mark.parametrize("name", OVS_FIRST)
def test_hwsflow_never_replaces_ovs_qdisc(ovs, name):
    assert ovs["qdiscs_ovs_alone"] == {"ovp0": ["ingress"], "ovp1": ["ingress"]}
    assert ovs["phases"][name]["qdiscs"] == {"ovp0": ["ingress"], "ovp1": ["ingress"]}  # none of hwsflow's


@pytest.mark.parametrize("name", sorted(DISTURBED))
def test_hwsflow_samples_again_soon_after_each_disturbance(ovs, name):
    phase = ovs["phases"][name]
    for port in DISTURBED[name]:
        found = phase["unsampled"][port]
        assert found is not None and found["back"], (port, found)  # its filter went, and came back
        assert found["after_free_s"] < SAMPLED_AGAIN_BOUND, (port, found)
    assert all(row["offload"] != "failed" and row["error"] is None for row in phase["rows"].values())


@pytest.mark.parametrize("name", [p for p in PHASES if p != POLICED])
def test_status_shows_both_ports_sampled(ovs, name):
    assert all(row["offload"] == "not_in_hw" and row["error"] is None
               for row in ovs["phases"][name]["rows"].values()), ovs["phases"][name]["rows"]


def test_the_policer_is_left_alone_and_the_port_shown_failed_with_what_to_do(ovs):
    phase = ovs["phases"][POLICED]
    row = phase["row_policed"]
    assert row["offload"] == "failed" and row["error_code"] == "priority_taken"
    assert "matchall filter with a police action" in row["error"] and "ingress_policing_rate=0" in row["error"]
    assert phase["ours_policed"] == []
    assert phase["unsampled"]["ovp0"]["holders"][-1] == "police"  # OVS's, untouched
    assert phase["rows"]["ovp1"]["offload"] == "not_in_hw"  # the other port sampled throughout


def test_sampling_returns_soon_after_the_policer_goes(ovs):
    found = ovs["phases"]["policer_removed"]["unsampled"]["ovp0"]
    assert found["holders"][0] is None and found["back"]  # the policer went, hwsflow's filter came back
    # within a second on a quiet machine (0.17 s measured); the bound allows for emulation under load
    assert found["after_free_s"] < SAMPLED_AGAIN_BOUND, found


def test_the_log_has_no_error_but_the_policer_once(ovs):
    errors = [line for line in ovs["log"].splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1 and "police" in errors[0], errors
    assert "INFO port ovp0: sampled again" in ovs["log"]
    assert "Traceback" not in ovs["log"]


def test_stop_leaves_ovs_as_it_was(ovs):
    assert ovs["exit"] == 0
    for port, found in ovs["after_stop"].items():
        assert found["ours"] == [] and found["qdiscs"] == ["ingress"] and found["flowers"] > 0, port


def test_hwsflow_first_then_ovs_takes_the_ports_over(ovs):
    assert ovs["qdiscs_before_ovs"] == {"ovp0": ["clsact"], "ovp1": ["clsact"]}  # hwsflow's own
    assert ovs["first_exit"] == 0
    for port, found in ovs["after_first_stop"].items():
        # hwsflow's filters gone; the qdisc stays while it holds Open vSwitch's flower rules
        assert found["ours"] == [] and found["qdiscs"] and found["flowers"] > 0, port
    assert "Traceback" not in ovs["first_log"]
    assert not [line for line in ovs["first_log"].splitlines() if line.startswith("ERROR ")]


def test_ovs_left_nothing_behind(ovs):
    assert ovs["ovs_stop"]["left"] == [] and ovs["ovs_stop"]["daemons"] == []


def test_a_filter_of_hwsflows_replaced_by_the_policer_is_shown_failed_soon(ovs):
    """OVS's policer can take the place of hwsflow's filter with no deletion event (hwsflow reinstalled while
    OVS's add waited for act_police to load): the new filter at its priority is hwsflow's cue to look, long
    before the periodic full check (10 s) would find it."""
    shown = ovs["phases"][POLICED]["shown_failed_s"]
    assert shown is not None and shown < SAMPLED_AGAIN_BOUND
