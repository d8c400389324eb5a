"""The callgrind measurement's work runs as drain does it, on both paths (valgrind itself is not run here: it
takes minutes; `python -m hwsflow.tools.bench_callgrind` does)."""

import pytest

from hwsflow.tools import bench_callgrind


@pytest.mark.parametrize("compiled", [True, False])
def test_the_measured_work_packs_and_sends_every_finished_datagram(compiled, monkeypatch):
    pipelines = []
    real = bench_callgrind.bench_pipeline

    def keep(*args, **kwargs):
        pipelines.append(real(*args, **kwargs))
        return pipelines[-1]

    monkeypatch.setattr(bench_callgrind, "bench_pipeline", keep)
    bench_callgrind.work(30, 16, compiled)
    (pipeline,) = pipelines
    assert pipeline.path == ("compiled" if compiled else "python")
    assert pipeline.stats.samples == 480 and pipeline.stats.compiled == (480 if compiled else 0)
    # datagrams were finished, and every one was sent: none left in the outbox or the builder's list
    assert pipeline.builder.sequence > 10 and pipeline.take() == []
