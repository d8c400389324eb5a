"""tshark, an independent decoder, reads what the encoder writes."""

from __future__ import annotations

import random
import shutil

import pytest

from hwsflow.wire.sflow import (
    DatagramBuilder,
    encode_ethernet_counters,
    encode_if_counters,
    encode_port_name,
    encode_queue_records,
)
from tests.helpers import sflow_check


@pytest.fixture(autouse=True)
def _need_tshark() -> None:
    # CI must run these: a missing tshark is a broken setup, not a skip.
    if shutil.which("tshark") is None:
        pytest.fail(sflow_check.SETUP_HINT)


def counters(ifindex: int, name: str) -> bytes:
    return (
        encode_if_counters(ifindex, 6, 10**10, 1, 3, 2**33, 1, 2, 3, 4, 5, 6, 2**34, 7, 8, 9, 10, 11, 0)
        + encode_ethernet_counters(*range(13))
        + encode_port_name(name)
    )


def mixed_datagrams(agent: str, max_size: int, seed: int) -> list[bytes]:
    """Compact and expanded flow and counter samples, several per datagram."""
    rng = random.Random(seed)
    builder = DatagramBuilder(agent, max_size=max_size)
    for i in range(60):
        big = rng.random() < 0.3
        if rng.random() < 0.75:
            builder.add_flow_sample(
                uptime_ms=1000 + i,
                seq=i + 2**32 - 10,  # wraps half way
                source_type=0,
                source_index=0x1000000 + i if big else i + 1,
                rate=rng.randint(1, 2**20),
                pool=rng.randint(0, 2**32 - 1),
                drops=rng.randint(0, 5),
                input_if=rng.choice([i + 1, 0x40000000 + i]) if big else i + 1,
                output_if=rng.choice([0, i + 2, 0xFFFFFFFF]) if big else rng.choice([0, i + 2]),
                frame_length=rng.randint(60, 9000),
                stripped=4,
                header=rng.randbytes(rng.randint(0, 200)),
            )
        else:
            index = 0x2000000 + i if big else i + 1
            builder.add_counter_sample(1000 + i, i, 0, index, counters(index, f"eth{i}"), 3)
    builder.flush(5000)
    return builder.take()


@pytest.mark.parametrize("agent", ["192.0.2.1", "2001:db8::1"])
def test_tshark_agrees_with_reference(agent: str) -> None:
    datagrams = mixed_datagrams(agent, max_size=1400, seed=len(agent))
    assert len(datagrams) > 5
    views = sflow_check.cross_check(datagrams)
    formats = {s["format"] for v in views for s in v["samples"]}
    assert formats == {1, 2, 3, 4}  # every sample kind was seen by tshark
    assert all(not v["problems"] for v in views)


def test_truncated_oversized_header_is_well_formed() -> None:
    builder = DatagramBuilder("192.0.2.1", max_size=300)
    builder.add_flow_sample(1, 1, 0, 1, 1, 1, 0, 1, 2, 9000, 4, bytes(range(256)) * 30)
    builder.flush(1)
    sflow_check.cross_check(builder.take())


def test_tshark_reads_each_queue_record_kind() -> None:
    """tshark 4.0 names no field of 0:1036, 0:1039 or 0:1040: it reads their format and length only.

    It also does not step over an undecoded record's body, so a record after one would be misread:
    each sample here carries one queue record, last; the reference decoder checks the combinations.
    """
    builder = DatagramBuilder("192.0.2.1")
    for i, supplied in enumerate([(5, None, None), (None, 2**40, None), (None, None, 1234)]):
        extra, count = encode_queue_records(*supplied)
        builder.add_flow_sample(1, i, 0, 3, 100, 100 * (i + 1), 0, 3, 0, 102, 4, bytes(range(98)), extra, count)
    builder.flush(1)
    (view,) = sflow_check.cross_check(builder.take())
    assert [[(r["format"], r["length"]) for r in s["records"]] for s in view["samples"]] == [
        [(1, 116), (1036, 4)], [(1, 116), (1040, 4)], [(1, 116), (1039, 4)]]


def test_checker_reports_malformed_datagrams() -> None:
    good = mixed_datagrams("192.0.2.1", max_size=600, seed=3)[0]
    (view,) = sflow_check.tshark_decode([good[: len(good) // 2]])
    assert view["problems"], "tshark should flag a datagram cut in half"
    with pytest.raises(AssertionError, match="malformed"):
        sflow_check.cross_check([good[: len(good) // 2]])


def test_checker_catches_disagreement() -> None:
    good = bytearray(mixed_datagrams("192.0.2.1", max_size=600, seed=4)[0])
    good[20:24] = (7).to_bytes(4, "big")  # datagram sequence: same for both decoders
    sflow_check.cross_check([bytes(good)])
    wrong_length = bytearray(good)
    wrong_length[32:36] = (int.from_bytes(good[32:36], "big") + 4).to_bytes(4, "big")
    with pytest.raises(AssertionError, match="sflow_ref"):
        sflow_check.cross_check([bytes(wrong_length)])
