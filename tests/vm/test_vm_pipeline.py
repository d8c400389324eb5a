"""The sampling pipeline on a real kernel: one VM boot runs tests/vm/scenarios.py, these tests judge it.

Real tc filter, real psample, the real `hwsflow run`, and real sFlow decoded by
hwsflow's reference decoder and by tshark.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import pytest

from hwsflow.wire import sflow_ref
from tests.helpers import sflow_check
from tests.vm import frames
from tests.vm.scenarios import COUNTS, POLLING, TAG_BARRIER, TAG_HSP0, TAG_HSP1_IN, TAG_HSP1_LATE, TAG_HSP1_OUT


@pytest.fixture(scope="session")
def samples_by_tag(vm, datagrams) -> dict[int, list[dict]]:
    """Flow samples received at the IPv4 collector, keyed by the test frame tag they carry."""
    out: dict[int, list[dict]] = defaultdict(list)
    for data in datagrams["v4"]:
        for sample in sflow_ref.parse_datagram(data)["samples"]:
            if sample["kind"] != "flow":
                continue
            found = frames.identify(sample["records"][0]["header"])
            if found is not None:
                sample["_index"] = found[1]
                out[found[0]].append(sample)
    return out


def _shape(filters: list[dict]) -> list[tuple]:
    """What identifies each filter, without the counters and timestamps `tc -s` adds."""
    return sorted(
        (f["pref"], f["kind"], f.get("chain", 0), tuple(a.get("kind") for a in f["options"].get("actions", [])))
        for f in filters if "options" in f  # tc's JSON also lists a bare head entry per filter
    )


def _ours(filters: list[dict]) -> list[dict]:
    return [f for f in filters if f.get("kind") == "matchall" and _sample_action(f) is not None]


def _sample_action(flt: dict) -> dict | None:
    for action in flt.get("options", {}).get("actions", []):
        if action.get("kind") == "sample":
            return action
    return None


def test_every_scenario_ran(vm):
    assert vm["errors"] == []
    assert vm["_exit_status"] == 0


def test_filter_is_matchall_sample_with_continue_and_cookie(vm):
    (flt,) = _ours(vm["tc_running"]["hsp0_ingress"])
    action = _sample_action(flt)
    assert flt["pref"] == 1 and flt["protocol"] == "all"
    assert action["control_action"]["type"] == "continue"
    assert action["group"] == 3000 and action["trunc_size"] == 128
    assert action["cookie"].startswith(b"hwsflow\x01".hex())


def test_egress_and_ingress_filters_on_a_clsact_hwsflow_created(vm):
    running = vm["tc_running"]
    groups = {_sample_action(f)["group"] for d in ("hsp1_ingress", "hsp1_egress") for f in _ours(running[d])}
    assert groups == {3001, 3002}
    assert any(q["kind"] == "clsact" for q in running["hsp1_qdisc"])


def test_sampling_rate_field(samples_by_tag):
    assert {s["sampling_rate"] for s in samples_by_tag[TAG_HSP0]} == {1}
    assert {s["sampling_rate"] for s in samples_by_tag[TAG_HSP1_IN]} == {4}
    assert {s["sampling_rate"] for s in samples_by_tag[TAG_HSP1_OUT]} == {4}


def test_rate_one_samples_every_packet_once(samples_by_tag):
    indexes = sorted(s["_index"] for s in samples_by_tag[TAG_HSP0])
    assert indexes == list(range(COUNTS[TAG_HSP0]))


def test_random_one_in_four_is_plausible(samples_by_tag):
    for tag in (TAG_HSP1_IN, TAG_HSP1_OUT):
        n = len(samples_by_tag[tag])
        expected = COUNTS[tag] / 4
        sd = (COUNTS[tag] * 0.25 * 0.75) ** 0.5
        assert abs(n - expected) < 5 * sd, (tag, n)


def test_input_and_output_ifindex(vm, samples_by_tag):
    hsp0, hsp1 = vm["ifindex"]["hsp0"], vm["ifindex"]["hsp1"]
    assert {(s["source_id_index"], s["input"], s["output"]) for s in samples_by_tag[TAG_HSP0]} == {(hsp0, hsp0, 0)}
    assert {(s["source_id_index"], s["input"]) for s in samples_by_tag[TAG_HSP1_IN]} == {(hsp1, hsp1)}
    # locally sent frames have no input port: psample omits IIFINDEX and sFlow says 0
    assert {(s["source_id_index"], s["input"], s["output"]) for s in samples_by_tag[TAG_HSP1_OUT]} == {(hsp1, 0, hsp1)}


@pytest.mark.parametrize("tag, header", [(TAG_HSP0, 128), (TAG_HSP1_IN, 64), (TAG_HSP1_OUT, 64)])
def test_header_bytes_and_frame_length(samples_by_tag, tag, header):
    assert samples_by_tag[tag]
    for sample in samples_by_tag[tag]:
        record = sample["records"][0]
        sent = frames.make_frame(tag, sample["_index"])
        assert record["header"] == sent[:header]
        assert record["frame_length"] == len(sent) + 4 and record["stripped"] == 4


def test_sequence_numbers_rise_without_gaps(datagrams):
    for key, stream in datagrams.items():
        parsed = [sflow_ref.parse_datagram(d) for d in stream]
        seqs = [d["sequence_number"] for d in parsed]
        assert seqs == list(range(1, len(seqs) + 1)), key
        per_source: dict[tuple[int, str], list[int]] = defaultdict(list)
        for d in parsed:
            for s in d["samples"]:
                # both directions share one source; flow and counter samples count separately
                per_source[s["source_id_index"], s["kind"]].append(s["sequence_number"])
        for source, numbers in per_source.items():
            assert numbers == list(range(1, len(numbers) + 1)), (key, source)


def test_no_drops_and_pool_counts_every_packet(samples_by_tag):
    hsp0 = sorted(samples_by_tag[TAG_HSP0], key=lambda s: s["sequence_number"])
    assert {s["drops"] for s in hsp0} == {0}
    assert [s["sample_pool"] for s in hsp0] == list(range(1, len(hsp0) + 1))


def test_last_pool_equals_the_sample_actions_counter(vm, samples_by_tag):
    """Rate 1 on hsp0: every packet is sampled, so the pool must match tc's count exactly."""
    (ours,) = _ours(vm["tc_before_stop"]["hsp0_ingress"])
    last = max(samples_by_tag[TAG_HSP0] + samples_by_tag[TAG_BARRIER], key=lambda s: s["sequence_number"])
    assert last["sample_pool"] == _sample_action(ours)["stats"]["packets"]


def test_pool_is_resynced_from_the_kernel_counter(samples_by_tag):
    """hsp1 samples 1-in-4: once the traffic is over, its pool is the tc actions' count, or the estimate where it ran ahead."""
    early = samples_by_tag[TAG_HSP1_IN] + samples_by_tag[TAG_HSP1_OUT]
    estimate = max(s["sample_pool"] for s in early)
    first_late = min(samples_by_tag[TAG_HSP1_LATE], key=lambda s: s["sequence_number"])
    counted = COUNTS[TAG_HSP1_IN] + COUNTS[TAG_HSP1_OUT]  # what hsp1's two sample actions saw
    assert first_late["sequence_number"] == max(s["sequence_number"] for s in early) + 1
    # a re-sync lifts a pool that is behind tc's count, and the next sample's 4 packets go on top of it; one that
    # ran ahead (issue 17) advances by the sampled packet alone, the other 3 filling what it is ahead by
    assert first_late["sample_pool"] == max(estimate + 1, counted + 4)
    pools = [s["sample_pool"] for s in sorted(early + samples_by_tag[TAG_HSP1_LATE], key=lambda s: s["sequence_number"])]
    assert all(x < y for x, y in pairwise(pools))  # above 1-in-1 every sample advances it (sfacctd's weight)


def test_both_collectors_receive_the_same_datagrams(datagrams):
    assert datagrams["v4"] and datagrams["v4"] == datagrams["v6"]


def test_later_priority_filter_sees_every_packet(vm):
    (foreign,) = [f for f in vm["tc_before_stop"]["hsp0_ingress"] if f["pref"] == 5 and "options" in f]
    (ours,) = _ours(vm["tc_before_stop"]["hsp0_ingress"])
    sent = COUNTS[TAG_HSP0] + 2  # and the two barrier frames
    assert foreign["options"]["actions"][0]["stats"]["packets"] == sent
    assert _sample_action(ours)["stats"]["packets"] == sent


def test_stop_removes_only_hwsflows_filters(vm):
    after = vm["tc_after_stop"]
    assert vm["pipeline_exit"] == 0
    assert _ours(after["hsp0_ingress"]) == []
    assert _shape(after["hsp0_ingress"]) == [(5, "matchall", 0, ("gact",))]  # the foreign filter stays
    assert [q["kind"] for q in after["hsp0_qdisc"] if q["kind"] == "ingress"] == ["ingress"]
    assert after["hsp1_ingress"] == [] and after["hsp1_egress"] == []
    assert not any(q["kind"] == "clsact" for q in after["hsp1_qdisc"])  # hwsflow's own qdisc went too


def test_tshark_decodes_every_datagram_consistently(datagrams):
    sflow_check.cross_check(datagrams["v4"])


def _counter_samples(datagrams, ifindex: int) -> list[tuple[int, dict]]:
    """(datagram uptime, sample) of every counter sample of one port, in arrival order."""
    out = []
    for data in datagrams["v4"]:
        d = sflow_ref.parse_datagram(data)
        out += [(d["uptime"], s) for s in d["samples"] if s["kind"] == "counters" and s["source_id_index"] == ifindex]
    return out


@pytest.mark.parametrize("port", ["hsp0", "hsp1"])
def test_counter_samples_carry_the_links_real_counters(vm, datagrams, port):
    samples = _counter_samples(datagrams, vm["ifindex"][port])
    assert [s["sequence_number"] for _, s in samples] == list(range(1, len(samples) + 1))
    generic, ethernet, name = samples[-1][1]["records"]  # taken after all traffic
    stats = vm["link_stats"][port]
    assert name["name"] == port and generic["ifIndex"] == vm["ifindex"][port]
    assert generic["ifType"] == 6 and generic["ifStatus"] == 3  # ethernetCsmacd, admin and oper up
    assert generic["ifInOctets"] == stats["rx"]["bytes"]
    assert generic["ifInUcastPkts"] + generic["ifInMulticastPkts"] == stats["rx"]["packets"]
    assert generic["ifOutOctets"] == stats["tx"]["bytes"] and generic["ifOutUcastPkts"] == stats["tx"]["packets"]
    assert generic["ifInOctets"] > 0 and ethernet["dot3StatsFCSErrors"] == stats["rx"]["errors"] == 0


def test_counter_samples_follow_the_polling_interval(vm, datagrams):
    for port in ("hsp0", "hsp1"):
        times = [uptime for uptime, _ in _counter_samples(datagrams, vm["ifindex"][port])]
        gaps = [b - a for a, b in pairwise(times)]
        assert gaps, port
        # datagram uptimes: a sample waits up to the 1 s flush before its datagram is stamped
        assert all(POLLING * 1000 - 1100 <= gap <= POLLING * 1000 + 1100 for gap in gaps), (port, gaps)


def test_agent_started_before_psample_waits_for_it_without_an_error(vm):
    """Nothing loads psample in the fresh guest before the first agent: its own filter pulls it in, so
    psample's absence at start is INFO, and no ERROR (naming `modprobe psample`) is logged."""
    log = vm["pipeline_log"]
    assert log.index("INFO psample is not loaded yet") < log.index("INFO psample is available now")
    assert "modprobe psample" not in log
    assert [line for line in log.splitlines() if line.startswith(("ERROR", "WARNING"))] == [], log


def test_refusals_are_loud_and_name_the_port(vm):
    log = vm["refusals_log"]
    assert "port hsp0: offload is `required`" in log
    assert "port hsp2: egress sampling is unavailable" in log
    assert "port nosuchport0: no such interface" in log
    assert vm["refusals_exit"] == 0
    for port in ("hsp0", "hsp2"):  # nothing left behind
        assert _shape(vm["refusals_tc_after"][port]) == _shape(vm["refusals_tc_before"][port])


def test_config_error_exits_2_before_touching_tc(vm):
    result = vm["config_error"]
    assert result["exit"] == 2
    assert result["path"] in result["stderr"] and "ports[0].sampling" in result["stderr"]
    assert result["qdisc_after"] == result["qdisc_before"]
