"""The fault matrix on a real kernel: the agent keeps sampling the healthy ports through each fault and
loses no sample it could have kept.

The guest side is tests/vm/scenarios_faults.py, run in the same boot as every other scenario.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from hwsflow.wire import sflow_ref
from tests.vm import frames
from tests.vm.scenarios_faults import BURST, CHECK_FRAMES, HEALTHY, TAG, VICTIM

# issue 6 promises one second for a new port or a deleted filter; test_vm_operations holds that on its
# own measurements, while these cases also run tc and veth churn of their own under emulation: they get
# a bound of a few seconds, and the README quotes what they measured
REPAIR_BOUND = 3.0
HEALTHY_CASES = ("collectors", "flap", "qdisc", "policer", "reload", "disk")


@pytest.fixture(scope="module")
def faults(vm) -> dict:
    assert "faults" in vm, vm["errors"]
    return vm["faults"]


@pytest.fixture(scope="module")
def datagrams(faults) -> list[dict]:
    return [sflow_ref.parse_datagram(bytes.fromhex(d)) for d in faults["datagrams"]]


@pytest.fixture(scope="module")
def seen(datagrams) -> dict[int, list[int]]:
    """Frame indexes sampled, by tag, with repeats kept (a duplicate would be a bug too)."""
    out: dict[int, list[int]] = defaultdict(list)
    for datagram in datagrams:
        for sample in datagram["samples"]:
            if sample["kind"] == "flow":
                frame = frames.identify(sample["records"][0]["header"])
                if frame is not None:
                    out[frame[0]].append(frame[1])
    return out


def test_the_fault_matrix_ran(vm, faults):
    assert not [e for e in vm["errors"] if "faults" in e]


@pytest.mark.parametrize("case", HEALTHY_CASES)
def test_the_healthy_port_lost_no_frame_during_the_fault(faults, seen, case):
    sent = faults[case]["healthy_sent"]
    assert sent > 0
    assert sorted(seen[TAG[case]]) == list(range(sent))


def test_psample_loaded_after_the_start_and_a_port_that_did_not_exist(faults, seen):
    case = faults["psample_late"]
    assert not case["psample_loaded_before"] and not case["psample_loaded_at_ready"]
    assert case["psample_before"] == "waiting for the psample module"
    # a named port missing at start is on its way as often as not: INFO, never an ERROR before the grace
    assert "INFO port ghost0: no such interface; sampled as soon as it appears" in case["log"]
    assert "ERROR port ghost0" not in case["log"]
    # no filter could load psample before the port appeared, and the port's filter did: no ERROR about it
    assert "INFO psample is not loaded yet" in case["log"] and "modprobe psample" not in case["log"]
    # the port's filter loads the module; the agent joins psample without waiting for its retry timer
    assert case["recovery_s"] < REPAIR_BOUND
    assert sorted(seen[TAG["ghost"]]) == list(range(CHECK_FRAMES))
    assert case["ghost_row"]["drops"] == 0
    assert case["exit"] == 0


def test_a_second_agent_started_at_the_same_time_refuses(faults):
    case = faults["two_at_once"]
    assert case["exit"] not in (0, None)
    assert "another hwsflow (pid" in case["log"] and "two agents would fight over the same filters" in case["log"]


def test_refused_and_unresolvable_collectors_are_reported_and_cost_the_others_nothing(faults, datagrams):
    by_target = {c["target"]: c for c in faults["collectors_status"]}
    assert by_target["127.0.0.1:9"]["errors"] > 0 and by_target["127.0.0.1:9"]["last_error"] == "ECONNREFUSED"
    unresolved = by_target["collector.invalid:6343"]
    assert unresolved["sent"] == 0 and unresolved["last_error"].startswith("cannot resolve 'collector.invalid'")
    assert by_target["127.0.0.1:16343"]["errors"] == 0
    # a name that does not resolve is retried: a WARNING at start, never an ERROR
    said = [line for line in faults["main_log"].splitlines() if "collector collector.invalid:6343" in line]
    assert said and all(line.startswith("WARNING ") for line in said), said
    # every datagram of each agent reached the working collector: sequence numbers run 1, 2, 3... per agent
    runs: list[list[int]] = []
    for datagram in datagrams:
        if datagram["sequence_number"] == 1:
            runs.append([])
        runs[-1].append(datagram["sequence_number"])
    assert len(runs) == 3  # the late-psample agent, the main agent, the one restarted after SIGKILL
    assert all(run == list(range(1, len(run) + 1)) for run in runs)


def test_a_port_deleted_and_recreated_is_sampled_again(faults, seen):
    assert faults["flap"]["recovery_s"] < REPAIR_BOUND
    assert sorted(seen[TAG["flap_check"]]) == list(range(CHECK_FRAMES))


def test_a_qdisc_replaced_by_another_program_gets_the_filter_back_beside_its_own(faults, seen):
    assert faults["qdisc"]["recovery_s"] < REPAIR_BOUND
    assert faults["qdisc_after"] == ["ingress"]  # the other program's qdisc, not a clsact of hwsflow's
    assert faults["foreign_after"] == [10]
    assert sorted(seen[TAG["qdisc_check"]]) == list(range(CHECK_FRAMES))


def test_a_policer_at_hwsflows_priority_is_left_alone_shown_failed_said_once_and_sampling_returns(faults, seen):
    case = faults["policer_case"]
    for row in (case["row_blocked"], case["row_still_blocked"]):
        assert row["offload"] == "failed" and row["error_code"] == "priority_taken"
        assert row["error"].startswith(f"port {VICTIM}: ingress priority 1 is held by another program's matchall "
                                       "filter with a police action")
        assert f"ovs-vsctl set interface {VICTIM} ingress_policing_rate=0" in row["error"]
    assert case["ours_blocked"] == [] and case["policers_blocked"] == [1]  # never fought over
    errors = [line for line in case["log"].splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1 and "police" in errors[0], case["log"]  # once, through all the heals
    assert "INFO port flt1: sampled again" in case["log"]
    # the filter deletion event, SETTLE, one heal: within the bound of this file's other repairs, which
    # share the emulated guest with tc and veth churn (the README quotes the figure)
    assert faults["policer"]["recovery_s"] < REPAIR_BOUND
    assert case["row_after"]["error"] is None and case["row_after"]["offload"] == "not_in_hw"
    assert sorted(seen[TAG["policer_check"]]) == list(range(CHECK_FRAMES))


def test_an_invalid_reload_keeps_the_running_config(faults):
    assert faults["after_bad_reload"] == {"flt0": 1, "flt1": 1, "flap0": 1}  # not the file's -3


def test_a_burst_over_capacity_is_counted_as_drops_on_its_port_and_sampling_recovers(faults, seen):
    case = faults["burst"]
    assert case["overruns"]["enobufs"] + (case["overruns"]["kernel_drops"] or 0) > 0
    assert case["delivered"][VICTIM] < BURST  # the socket did overflow
    # every sample the burst produced was delivered or counted as a drop of its own port, none twice
    assert case["drops"][VICTIM] == BURST - case["delivered"][VICTIM]
    assert case["drops"][HEALTHY] == 1 - case["delivered"][HEALTHY]
    assert len(seen[TAG["burst"]]) == len(set(seen[TAG["burst"]]))
    assert sorted(seen[TAG["burst_check"]]) == list(range(CHECK_FRAMES))
    assert sorted(seen[TAG["healthy_check"]]) == list(range(CHECK_FRAMES))


def test_a_full_disk_stops_neither_healing_nor_the_control_socket(faults, seen):
    assert faults["disk"]["recovery_s"] < REPAIR_BOUND
    assert faults["disk_status_ok"]
    assert sorted(seen[TAG["disk_check"]]) == list(range(CHECK_FRAMES))


def test_sigkill_and_restart_on_full_disks_adopts_the_filters(faults, seen):
    case = faults["restart"]
    for port in (HEALTHY, VICTIM):
        assert len(case["after"][port]) == 1  # never two
        assert case["after"][port][0]["index"] == case["before"][port][0]["index"]  # the very same action
        assert case["drops"][port] == 0
    assert sorted(seen[TAG["restart"]]) == list(range(case["healthy_sent"]))
    assert sorted(seen[TAG["restart_check"]]) == list(range(CHECK_FRAMES))
    assert faults["restart_exit"] == 0
    assert faults["after_stop"] == {HEALTHY: [], VICTIM: [], "flap0": []}


def test_the_logs_hold_no_traceback(faults):
    for log in (faults["psample_late"]["log"], faults["log_before_disk_full"], faults["two_at_once"]["log"]):
        assert "Traceback" not in log
