"""The receive pipeline, bytes in and datagrams out: psample messages -> sFlow v5."""


from hwsflow.wire import psample, sflow_ref
from hwsflow.core.config import SAMPLE_ROOM
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.core.groups import GroupTable
from hwsflow.wire.netlink import NLMSG_HDR
from hwsflow.core.pipeline import SamplePipeline

FAMILY = 0x1C
BIG_IFINDEX = 0x12345  # above 65535: psample's IIFINDEX carries only 0x2345


def make_pipeline(direction="ingress", header=64, max_size=1400, compiled=None):
    groups = GroupTable(1000)
    groups.bind(BIG_IFINDEX, "p0", direction, 10, header)
    pipeline = SamplePipeline(DatagramBuilder("192.0.2.1", max_size=max_size), groups, FAMILY, compiled=compiled)
    pipeline.set_links([1, 7, BIG_IFINDEX])
    return pipeline


def kernel_sample(seq, **kw):
    base = dict(group=1000, seq=seq, raw_rate=10, orig_size=200, iif=BIG_IFINDEX & 0xFFFF,
                data=bytes(range(200)), timestamp=5, proto=0x0800)
    base.update(kw)
    return psample.Sample(**base)


def run(pipeline, messages, uptime=1000):
    for msg in messages:
        pipeline.feed(msg, len(msg), uptime)
    pipeline.flush(uptime)
    return [sflow_ref.parse_datagram(d) for d in pipeline.take()]


def flows(datagrams):
    return [s for d in datagrams for s in d["samples"]]


def test_ingress_samples_become_flow_samples():
    datagrams = run(make_pipeline(), [psample.build_message(kernel_sample(i), FAMILY) for i in range(3)])
    samples = flows(datagrams)
    assert [s["sequence_number"] for s in samples] == [1, 2, 3]
    first = samples[0]
    assert first["source_id_index"] == BIG_IFINDEX  # the full ifindex, never the 16-bit one
    assert (first["input"], first["output"]) == (BIG_IFINDEX, 0)
    assert (first["sampling_rate"], first["sample_pool"], first["drops"]) == (10, 10, 0)
    record = first["records"][0]
    assert record["frame_length"] == 204 and record["stripped"] == 4  # FCS counted, and said stripped
    assert record["header"] == bytes(range(64))  # truncated to the port's header size


def test_egress_maps_the_16_bit_iif_to_a_known_port():
    msg = psample.build_message(kernel_sample(0, iif=7, oif=BIG_IFINDEX & 0xFFFF), FAMILY)
    (sample,) = flows(run(make_pipeline("egress"), [msg]))
    assert (sample["input"], sample["output"]) == (7, BIG_IFINDEX)


def test_gaps_become_drops_on_the_right_source():
    msgs = [psample.build_message(kernel_sample(seq), FAMILY) for seq in (0, 1, 5)]
    samples = flows(run(make_pipeline(), msgs))
    assert [s["drops"] for s in samples] == [0, 0, 3]
    assert samples[-1]["sample_pool"] == 60


def test_both_directions_share_one_data_source_sequence():
    groups = GroupTable(1000)
    groups.bind(BIG_IFINDEX, "p0", "ingress", 10, 64)
    groups.bind(BIG_IFINDEX, "p0", "egress", 10, 64)
    pipeline = SamplePipeline(DatagramBuilder("192.0.2.1"), groups, FAMILY)
    msgs = [psample.build_message(kernel_sample(0, group=1000), FAMILY),
            psample.build_message(kernel_sample(0, group=1001, oif=5), FAMILY),
            psample.build_message(kernel_sample(2, group=1001, oif=5), FAMILY)]  # egress lost one
    samples = flows(run(pipeline, msgs))
    assert [s["sequence_number"] for s in samples] == [1, 2, 3]
    assert [s["sample_pool"] for s in samples] == [10, 20, 40]
    assert [s["drops"] for s in samples] == [0, 0, 1]
    assert groups.get(1001).drops == 1 and groups.get(1000).drops == 0


def test_orig_size_at_the_u32_limit_clamps_frame_length():
    msg = psample.build_message(kernel_sample(0, orig_size=2**32 - 1), FAMILY)
    (sample,) = flows(run(make_pipeline(), [msg]))
    assert sample["records"][0]["frame_length"] == 2**32 - 1


def test_queue_metadata_becomes_extension_records():
    msg = psample.build_message(kernel_sample(0, oif=9, out_tc=3, out_tc_occ=2**33, latency=4500), FAMILY)
    (sample,) = flows(run(make_pipeline(), [msg]))
    header, queue, depth, delay = sample["records"]
    assert header["format"] == 1
    assert (queue["format"], queue["queue"]) == (1036, 3)
    assert (depth["format"], depth["depth"]) == (1040, 2**32 - 1)  # saturated, as the extension says
    assert (delay["format"], delay["delay"]) == (1039, 4500)


def test_only_supplied_queue_metadata_is_exported():
    msgs = [psample.build_message(kernel_sample(0), FAMILY),
            psample.build_message(kernel_sample(1, latency=77), FAMILY),
            psample.build_message(kernel_sample(2, out_tc=0), FAMILY)]  # queue 0 is a queue, not absence
    samples = flows(run(make_pipeline(), msgs))
    assert [[r["format"] for r in s["records"]] for s in samples] == [[1], [1, 1039], [1, 1036]]
    assert samples[2]["records"][1]["queue"] == 0


def test_largest_sample_with_every_queue_record_fits_the_configured_room():
    """config.SAMPLE_ROOM promises that datagram_size = header + SAMPLE_ROOM holds one whole sample."""
    header = 1024
    groups = GroupTable(1000)
    groups.bind(0xFFFFFFFF, "p0", "egress", 10, header)  # expanded: the largest flow sample form
    builder = DatagramBuilder("2001:db8::1", max_size=header + SAMPLE_ROOM, expanded=True)
    pipeline = SamplePipeline(builder, groups, FAMILY)
    msg = psample.build_message(kernel_sample(0, oif=5, data=bytes(header), orig_size=9000, out_tc=1,
                                              out_tc_occ=2, latency=3), FAMILY)
    (sample,) = flows(run(pipeline, [msg]))
    assert sample["records"][0]["header_length"] == header
    assert len(sample["records"]) == 4


def test_other_groups_are_ignored_and_counted():
    pipeline = make_pipeline()
    run(pipeline, [psample.build_message(kernel_sample(0, group=77), FAMILY)])
    assert (pipeline.stats.foreign, pipeline.stats.samples) == (1, 0)


def test_malformed_messages_are_counted_and_skipped():
    pipeline = make_pipeline()
    good = psample.build_message(kernel_sample(0), FAMILY)
    bad = bytearray(psample.build_message(kernel_sample(1, oif=3), FAMILY))  # general path
    bad[NLMSG_HDR.size + 4] = 0xFF  # first attribute's length now overruns the message
    samples = flows(run(pipeline, [bytes(bad), good]))
    assert pipeline.stats.malformed == 1
    assert len(samples) == 1


def test_group_notices_and_other_families_are_not_samples():
    pipeline = make_pipeline()
    notice = bytearray(psample.build_message(kernel_sample(0), FAMILY))
    notice[NLMSG_HDR.size] = psample.CMD_NEW_GROUP
    other = bytearray(psample.build_message(kernel_sample(0), FAMILY))
    other[4] = FAMILY + 1
    assert flows(run(pipeline, [bytes(notice), bytes(other)])) == []
    assert pipeline.stats.other == 2 and pipeline.stats.malformed == 0


def test_several_messages_in_one_read():
    pipeline = make_pipeline()
    blob = b"".join(psample.build_message(kernel_sample(i), FAMILY) for i in range(4))
    pipeline.feed(blob, len(blob), 10)
    pipeline.flush(10)
    assert len(flows([sflow_ref.parse_datagram(d) for d in pipeline.take()])) == 4
