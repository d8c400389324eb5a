"""Independent decoders read what the real agent sent in the VM: sfcapd -E, sfacctd and tshark.

The datagrams are the ones the guest's collectors captured (the pipeline,
estimate and loss scenarios); tests/helpers/interop.py replays them to each daemon.
"""

from __future__ import annotations

import math

import pytest

from hwsflow.wire import sflow_ref
from tests.helpers import interop, sflow_check

STREAMS = ("pipeline", "estimate", "loss")


@pytest.fixture(scope="session")
def streams(vm) -> dict[str, list[bytes]]:
    """Each agent run's datagrams as its IPv4 collector received them, in order."""
    found = {"pipeline": vm.get("datagrams", {}).get("v4", [])}  # absent when only some modules ran
    for name in ("estimate", "loss"):
        found[name] = vm.get("accounting", {}).get(name, {}).get("datagrams", [])
    return {name: [bytes.fromhex(d) for d in hexes] for name, hexes in found.items()}


def flow_samples(datagrams: list[bytes]) -> list[dict]:
    return [s for d in datagrams for s in sflow_ref.parse_datagram(d)["samples"] if s["kind"] == "flow"]


@pytest.mark.parametrize("stream", STREAMS)
def test_sfcapd_decodes_every_sample_without_complaint(streams, stream, tmp_path):
    datagrams = streams[stream]
    assert datagrams
    ours = flow_samples(datagrams)
    view = interop.sfcapd_decode(datagrams, tmp_path)
    assert view.problems == [], view.log
    assert view.returncode == 0 and view.socket_drops == 0
    assert view.flows == len(ours)
    assert view.packets == sum(s["sampling_rate"] for s in ours)
    assert view.summary["bad_packets"] == 0 and view.summary["sequence_errors"] == 0


def pool_renormalised(samples: list[dict]) -> int:
    """sfacctd's renormalised count of one source (measured, tests/system/test_interop.py): the first sample at its
    rate, every later one at the pool's advance since the previous one."""
    return samples[0]["sampling_rate"] + samples[-1]["sample_pool"] - samples[0]["sample_pool"]


def sent_by_port(vm: dict, stream: str) -> dict[int, int]:
    """Packets through each port's sample action over the whole run, as tc counted them."""
    acc = vm["accounting"]
    counted = acc["estimate"]["tc_final"] if stream == "estimate" else acc["loss"]["tc"]
    return {acc["ifindex"][port]: packets for port, packets in counted.items()}


@pytest.mark.parametrize("stream", ("estimate", "loss"))
def test_sfacctd_renormalised_totals_match_the_packets_sent(vm, streams, stream, tmp_path):
    """Per port, sfacctd's total is what the samples' pools say, and within sFlow's 95% bound of what tc counted.

    The loss stream is the hard case: samples lost, counted in drops, and the pool re-synced from tc in between.
    """
    datagrams = streams[stream]
    view = interop.sfacctd_totals(datagrams, tmp_path)
    assert view.problems == [], view.log
    assert view.returncode == 0 and view.socket_drops == 0
    assert view.sequence_numbers == [sflow_ref.parse_datagram(d)["sequence_number"] for d in datagrams]
    ours = flow_samples(datagrams)
    sent = sent_by_port(vm, stream)
    assert set(view.packets_by_in_iface) == set(sent)
    for port, packets in sent.items():
        samples = [s for s in ours if s["source_id_index"] == port]
        total = view.packets_by_in_iface[port]
        assert total == pool_renormalised(samples), port
        assert abs(total - packets) / packets * 100 <= 196 * math.sqrt(1 / len(samples)), (port, total, packets)


@pytest.mark.parametrize("stream", ("estimate", "loss"))
def test_tshark_decodes_every_datagram_consistently(streams, stream):
    assert streams[stream]
    sflow_check.cross_check(streams[stream])
