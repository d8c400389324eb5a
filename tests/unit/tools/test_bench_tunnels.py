"""`hwsflow bench`'s tunnel mix, run tiny: the messages are what the kernel sends, each kind takes the path it
should, and the report has its figures.  No timing is asserted."""

import json

from hwsflow.tools import bench_tunnels as bt
from hwsflow.tools.bench import bench_pipeline
from hwsflow.wire import psample, sflow_ref


def test_tunnel_messages_are_the_plain_ones_with_the_key_after_data():
    for plain, tunnel in zip(bt.templates(bt.FAMILY_ID, bt.PORTS), bt.tunnel_templates()):
        decoded = psample.decode_sample(tunnel)
        assert decoded.tunnel == bt.KEY
        assert tunnel[:len(plain)][4:] == bytes(plain)[4:]  # the same message up to DATA's end (length aside)
        assert psample.fast_decode(tunnel, 0, len(tunnel), bt.FAMILY_ID) is None


def test_each_mix_exports_every_sample_by_its_path_with_its_records():
    """The compiled loop (built for the tests: test_fastpath holds that) packs the plain samples alone."""
    for every, tunnelled in ((0, 0), (1, bt.SLOTS), (4, bt.SLOTS // 4)):
        pipeline = bench_pipeline()
        buf, lengths = bt.chunks(every)[0]
        pipeline.feed_slots(buf, lengths, bt.STRIDE, 0)
        pipeline.flush(0)
        samples = [s for d in pipeline.take() for s in sflow_ref.parse_datagram(d)["samples"]]
        assert len(samples) == bt.SLOTS and pipeline.stats.compiled == bt.SLOTS - tunnelled
        with_vni = [s for s in samples if [r["format"] for r in s["records"]] == [1, 1024, 1030]]
        assert len(with_vni) == tunnelled
        assert all(s["records"][2]["vni"] == bt.KEY.id for s in with_vni)
        assert all(s["drops"] == 0 for s in samples)


def test_the_report_has_its_figures():
    report = bt.measure_mix(samples=bt.SLOTS * 2, runs=1)
    json.loads(json.dumps(report))
    assert all(report[name] > 0 for name in bt.MIXES)
    assert report["tunnel_extra_us"] == round(report["tunnel"] - report["plain"], 3)
    assert report["path"] == "compiled"
    assert report["paths"]["plain"]["compiled"] == report["paths"]["plain"]["samples"] == bt.SLOTS * 2
    assert report["paths"]["tunnel"]["compiled"] == 0
    assert report["paths"]["mix_1_in_4"]["compiled"] == bt.SLOTS * 3 // 2
    assert "per tunnel sample" in bt.format_mix(report)
