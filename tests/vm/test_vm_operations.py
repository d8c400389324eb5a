"""Operating hwsflow on a real kernel: CLI, reload, port discovery, self-healing, kill -9, root-only control.

The guest side is tests/vm/scenarios_operations.py, run in the same boot as every other scenario.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from hwsflow.wire import sflow_ref
from tests.vm import frames
from tests.vm.scenarios_operations import NEW_FRAMES, STEADY_FRAMES, TAG_AFTER_HEAL, TAG_BACK, TAG_NEW, TAG_STEADY

WITHIN_A_SECOND = 1.0  # the promise for new ports and deleted filters, measured in the guest


@pytest.fixture(scope="module")
def ops(vm) -> dict:
    assert "ops" in vm, vm["errors"]
    return vm["ops"]


@pytest.fixture(scope="module")
def flows(ops) -> dict[int, list[dict]]:
    """Flow samples by source ifindex, in arrival order, each with the (tag, index) of its frame."""
    out: dict[int, list[dict]] = defaultdict(list)
    for data in ops["datagrams"]:
        for sample in sflow_ref.parse_datagram(bytes.fromhex(data))["samples"]:
            if sample["kind"] == "flow":
                sample["_frame"] = frames.identify(sample["records"][0]["header"])
                out[sample["source_id_index"]].append(sample)
    return out


def test_the_scenario_ran(vm, ops):
    assert not [e for e in vm["errors"] if "operations" in e]


def test_enable_status_and_disable_through_the_cli(ops):
    assert ops["enable"]["exit"] == 0 and "hop2: sampling 1-in-7 both" in ops["enable"]["stdout"]
    assert [f["rate"] for f in ops["enable_tc"]["ingress"] + ops["enable_tc"]["egress"]] == [7, 7]
    status = json.loads(ops["status_json"]["stdout"])
    rows = {row["port"]: row for row in status["ports"]}
    assert rows["hop2"]["runtime"] is True and rows["hop2"]["rate"] == 7 and len(rows["hop2"]["groups"]) == 2
    assert rows["hop0"]["runtime"] is False and rows["hop0"]["offload"] == "not_in_hw"
    assert rows["hop0"]["ifindex"] == ops["ifindex"]["hop0"]
    assert {c["target"] for c in status["collectors"]} == {"127.0.0.1:16343", "[::1]:16344"}
    text = ops["status_text"]["stdout"]
    assert "runtime" in text and "only the slow path" in text and "COLLECTOR" in text
    assert ops["disable"]["exit"] == 0
    assert ops["disable_tc"] == {"ingress": [], "egress": [], "qdisc": []}  # its clsact went too
    assert ops["disable_again"]["exit"] == 1 and "hop2: not sampled" in ops["disable_again"]["stderr"]
    assert ops["enable_missing"]["exit"] == 1 and "nosuchport9: no such interface" in ops["enable_missing"]["stderr"]


def test_reload_changes_one_port_and_leaves_the_other_sampling_without_a_gap(ops, flows):
    assert [f["rate"] for f in ops["hop1_after_reload"]] == [3]
    # hop0's filter is the very same action: not reinstalled
    assert [f["index"] for f in ops["hop0_after_reload"]] == [f["index"] for f in ops["hop0_before_reload"]]
    # the reload happened while hop0's frames flowed, and hop0 sampled every one of them
    assert 0 < ops["steady_seen_at_reload"] < STEADY_FRAMES
    hop0 = flows[ops["ifindex"]["hop0"]]
    steady = sorted(s["_frame"][1] for s in hop0 if s["_frame"] and s["_frame"][0] == TAG_STEADY)
    assert steady == list(range(STEADY_FRAMES))
    seqs = [s["sequence_number"] for s in hop0]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert {s["drops"] for s in hop0} == {0}


def test_an_invalid_reload_keeps_the_running_config(ops):
    assert [f["rate"] for f in ops["hop1_after_bad_reload"]] == [3]
    assert "ports[1].sampling" in ops["log"] and "the running config stays in effect" in ops["log"]


def test_a_new_port_is_sampled_within_a_second_and_again_when_it_returns(ops, flows):
    assert ops["new_port_sampled_s"] < WITHIN_A_SECOND
    assert ops["returned_port_sampled_s"] < WITHIN_A_SECOND
    first, second = ops["new_port_ifindex"], ops["returned_port_ifindex"]
    assert first != second
    assert {s["_frame"][0] for s in flows[first]} == {TAG_NEW} and len(flows[first]) == NEW_FRAMES
    assert {s["_frame"][0] for s in flows[second]} == {TAG_BACK} and len(flows[second]) == NEW_FRAMES
    assert f"hopn0 (ifindex {first}) disappeared" in ops["log"]


def test_a_deleted_qdisc_is_healed_within_a_second_reusing_the_other_programs_qdisc(ops, flows):
    assert ops["hop0_heal_s"] < WITHIN_A_SECOND and ops["hop1_heal_s"] < WITHIN_A_SECOND
    assert ops["hop0_qdisc_after"] == ["clsact"]
    assert ops["hop1_qdisc_after"] == ["ingress"]  # Open vSwitch's re-created qdisc, not a clsact of ours
    healed = [s for s in flows[ops["ifindex"]["hop0"]] if s["_frame"] and s["_frame"][0] == TAG_AFTER_HEAL]
    assert len(healed) == 10


def test_kill_9_and_restart_adopt_the_filters_without_duplicates(ops):
    assert ops["after_kill"] == ops["before_kill"]  # a killed agent leaves its filters sampling
    for port, filters in ops["after_restart"].items():
        assert len(filters) == 1, port
        # adopted: the same action instance, still counting
        assert filters[0]["index"] == ops["before_kill"][port][0]["index"], port
    assert ops["restart_log"].count("adopted the filter an earlier run left") == 3
    assert ops["restart_exit"] == 0
    assert ops["after_stop"] == {"hop0": [], "hop1": [], "hopn0": []}
    # the clsact a killed run created is recognised (it held only hwsflow's filters) and goes too;
    # the ingress qdisc another program made stays
    assert ops["qdisc_after_stop"] == {"hop0": [], "hop1": ["ingress"]}


def test_the_control_socket_refuses_other_users(ops):
    assert "Permission denied" in ops["nobody"] or "permission denied" in ops["nobody"]


def test_the_demo_ends_cleanly(vm):
    """What `./dev demo` prints: the agent's log without a WARNING or an ERROR, and decoded samples."""
    assert "demo" in vm, vm["errors"]
    demo = vm["demo"]
    assert demo["exit"] == 0, demo
    assert "sampling 1 ports through 1 psample groups" in demo["log"]
    alarms = [line for line in demo["log"].splitlines() if line.startswith(("WARNING", "ERROR", "CRITICAL"))]
    assert alarms == [], demo["log"]
    assert demo["decoded"].count("sFlow v5 agent=198.51.100.1") >= 3 and "  flow seq=" in demo["decoded"]
