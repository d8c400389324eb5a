"""`hwsflow bench`'s tunnel mix: what a sample carrying psample's TUNNEL attribute costs, next to a plain one.

The per-sample work alone, in this process: prebuilt recvmmsg-like slots of
kernel-layout messages (bench.templates' ports and frames; the tunnel ones with
a VXLAN key, TUNNEL after DATA as the kernel sends it) fed to the agent's
pipeline (SamplePipeline.feed_slots, then take), CPU time per sample.  The
receive and send costs, the same for both kinds, are the main benchmark's
floor.  Plain samples take the agent's path (the compiled loop where it is
built); tunnel samples leave the usual layout, so the compiled loop leaves
them to the general parser, plus the tunnel records' encoding: the difference
is what overlay traffic costs.
"""

from __future__ import annotations

import statistics
import struct
import time
from typing import Any

from hwsflow.tools.bench import FAMILY_ID, PORTS, SEQ_OFFSET, bench_pipeline, templates
from hwsflow.wire import psample

SLOTS = 128  # per feed_slots call, as the agent reads
STRIDE = 512  # bytes per slot: the largest message here is well under it
CHUNKS = 64  # distinct chunks, fed in a cycle: GROUP_SEQ restarts once per cycle (a reset, not a gap)
KEY = psample.TunnelKey(id=5001, ipv4_src=bytes((192, 0, 2, 10)), ipv4_dst=bytes((192, 0, 2, 20)), ttl=64,
                        tp_src=49152, tp_dst=4789)
MIXES = {"plain": 0, "tunnel": 1, "mix_1_in_4": 4}  # every n-th message carries the tunnel key (0: none)
_SEQ = struct.Struct("=I")


def tunnel_templates() -> list[bytes]:
    """bench.templates' messages with the tunnel key appended, as the kernel appends TUNNEL after DATA."""
    out = []
    for msg in templates(FAMILY_ID, PORTS):
        sample = psample.decode_sample(msg)
        sample.tunnel = KEY
        out.append(psample.build_message(sample, FAMILY_ID))
    return out


def chunks(tunnel_every: int) -> list[tuple[bytearray, list[int]]]:
    """CHUNKS chunks of SLOTS slots, the ports in turn with consecutive GROUP_SEQ; every tunnel_every-th
    message a tunnel one (0: none)."""
    plain, tunnel = templates(FAMILY_ID, PORTS), tunnel_templates()
    out = []
    n = 0
    for _ in range(CHUNKS):
        buf, lengths = bytearray(SLOTS * STRIDE), []
        for slot in range(SLOTS):
            msg = (tunnel if tunnel_every and n % tunnel_every == 0 else plain)[n % PORTS]
            at = slot * STRIDE
            buf[at:at + len(msg)] = msg
            _SEQ.pack_into(buf, at + SEQ_OFFSET, n // PORTS + 1)
            lengths.append(len(msg))
            n += 1
        out.append((buf, lengths))
    return out


def cpu_per_sample(tunnel_every: int, samples: int) -> tuple[float, Any]:
    """CPU seconds per sample of feed_slots + take over `samples` samples, and the pipeline's stats."""
    pipeline = bench_pipeline()
    feed = chunks(tunnel_every)
    rounds = max(1, samples // SLOTS)
    cpu0 = time.process_time()
    for i in range(rounds):
        buf, lengths = feed[i % CHUNKS]
        pipeline.feed_slots(buf, lengths, STRIDE, 0)
        pipeline.take()
    return (time.process_time() - cpu0) / (rounds * SLOTS), pipeline.stats


def measure_mix(samples: int = 200_000, runs: int = 5) -> dict[str, Any]:
    """Median CPU microseconds per sample of each mix, interleaved runs; and how each mix's samples went."""
    times: dict[str, list[float]] = {name: [] for name in MIXES}
    paths: dict[str, dict[str, int]] = {}
    for _ in range(runs):
        for name, every in MIXES.items():
            seconds, stats = cpu_per_sample(every, samples)
            times[name].append(seconds)
            paths[name] = {"samples": stats.samples, "compiled": stats.compiled, "malformed": stats.malformed}
    report: dict[str, Any] = {name: round(statistics.median(values) * 1e6, 3) for name, values in times.items()}
    report["path"] = bench_pipeline().path  # the agent's: "compiled", or "python" without the extension
    report["tunnel_extra_us"] = round(report["tunnel"] - report["plain"], 3)
    report["paths"] = paths
    report["message_bytes"] = {"plain": len(templates(FAMILY_ID, 1)[0]), "tunnel": len(tunnel_templates()[0])}
    return report


def format_mix(r: dict[str, Any]) -> str:
    return (f"tunnels:     {r['plain']:.2f} us CPU per plain sample ({r['path']} path), {r['tunnel']:.2f} us per tunnel sample "
            f"(+{r['tunnel_extra_us']:.2f} us: the general parser and the tunnel records), {r['mix_1_in_4']:.2f} us "
            f"per sample with 1 in 4 tunnelled (per-sample work alone: pipeline.feed_slots and take)")
