"""sfcapd -E on datagrams carrying the sFlow tunnel structures, for the host and the VM tests.

nfdump's sflow reader before 1.7.5 (Debian 12 ships 1.7.1) consumes nothing of a
VNI record (0:1029 / 0:1030): its reader only reads the value in DEVEL builds
(fixed upstream by commit f8381be, February 2024, first in 1.7.5).  Its length
check then aborts the rest of the datagram (the samples before that one are
kept), with the two lines in NFDUMP_VNI_BUG.  The IPv4 / IPv6 tunnel structures
(0:1023 to 0:1026) it reads correctly.  So the checks here accept exactly two
outcomes: sfcapd read every sample, or it stopped reading each datagram that
carries a VNI record at its first sample with one, with that complaint and
nothing else, and read everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import interop
from hwsflow.wire import sflow_ref

VNI_FORMATS = frozenset({1029, 1030})
NFDUMP_VNI_BUG = ["SFLOW: flow_sample_element length error (expected 4, found 0)", "SFLOW: caught exception: 3"]


def flow_samples(datagrams: list[bytes]) -> list[dict[str, Any]]:
    return [s for d in datagrams for s in sflow_ref.parse_datagram(d)["samples"] if s["kind"] == "flow"]


def carries(datagram: bytes, formats: frozenset[int]) -> bool:
    return any(r["enterprise"] == 0 and r["format"] in formats for s in flow_samples([datagram]) for r in s["records"])


def without_records(datagram: bytes, formats: frozenset[int]) -> bytes:
    """The datagram with these (enterprise 0) flow records taken out of every flow sample, lengths and counts
    rebuilt by the reference decoder."""
    parsed = sflow_ref.Datagram.parse(datagram)
    for sample in parsed.samples:
        if sample.format in (1, 3):
            sample.data.records = [r for r in sample.data.records if r.format not in formats]
    return bytes(sflow_ref.Datagram.build(parsed))


def has_vni(sample: dict[str, Any]) -> bool:
    return any(r["enterprise"] == 0 and r["format"] in VNI_FORMATS for r in sample["records"])


def check_sfcapd(datagrams: list[bytes], workdir: Path) -> dict[str, int]:
    """Replay to sfcapd -E and assert one of the two outcomes above; returns the datagrams it cut short and the
    flows it read."""
    view = interop.sfcapd_decode(datagrams, workdir)
    cut = [d for d in datagrams if carries(d, VNI_FORMATS)] if view.problems else []
    assert view.problems == NFDUMP_VNI_BUG * len(cut), view.log
    read = []
    for datagram in datagrams:
        samples = flow_samples([datagram])
        read += samples[:next(i for i, s in enumerate(samples) if has_vni(s))] if datagram in cut else samples
    assert view.returncode == 0 and view.socket_drops == 0
    assert view.flows == len(read)
    assert view.packets == sum(s["sampling_rate"] for s in read)
    assert view.summary["bad_packets"] == 0 and view.summary["sequence_errors"] == 0
    return {"datagrams": len(datagrams), "cut": len(cut), "flows": view.flows}
