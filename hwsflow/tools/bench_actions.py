"""`hwsflow bench`'s action dump: what back-off's counter reading costs on a host with many sample actions.

Back-off reads every sample action's counter once a tick with one
RTM_GETACTION dump, on the event loop: while it parses, no sample is read.
Measured here on kernel-layout dump messages (32 actions each, as the kernel
fills them without TCA_FLAG_LARGE_DUMP_ON; built with the same nla tables the
agent sends with), parsed by the agent's walk (wire/tc_actions) and by
pyroute2's decoder for comparison, CPU time of the whole dump.  A real dump's
actions carry a few more attributes (TCA_SAMPLE_TM, rate estimator and queue
stats), which both ways skip: the figures are a little low for both.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

from hwsflow.wire import tc_actions, tc_nla

COUNTS = (256, 2048)  # sample actions on the host: a rack switch's ports, and a SmartNIC host's VF representors


def sample_action(index: int, rate: int, group: int, packets: int, pkt64: bool = True,
                  cookie: bytes = b"") -> dict[str, Any]:
    """One sample action of a dump, as tc_nla's classes encode it: parameters, options and counters."""
    stats: list[list[Any]] = [["TCA_STATS_BASIC", {"bytes": 1500 * (packets & 0xFFFFFFFF),
                                                       "packets": packets & 0xFFFFFFFF}]]
    if pkt64:
        stats.append(["TCA_STATS_PKT64", packets])
    attrs: list[list[Any]] = [
        ["TCA_ACT_KIND", "sample"],
        ["TCA_ACT_OPTIONS", {"attrs": [
            ["TCA_SAMPLE_PARMS", {"index": index, "capab": 0, "action": tc_nla.TC_ACT_PIPE, "refcnt": 1,
                                  "bindcnt": 1}],
            ["TCA_SAMPLE_RATE", rate], ["TCA_SAMPLE_TRUNC_SIZE", 128], ["TCA_SAMPLE_PSAMPLE_GROUP", group]]}],
        ["TCA_ACT_STATS", {"attrs": stats}],
    ]
    if cookie:
        attrs.append(["TCA_ACT_COOKIE", cookie])
    return {"attrs": attrs}


def dump_message(actions: list[dict[str, Any]]) -> bytes:
    """One RTM_NEWACTION message of a dump's answer holding these actions (at most TCA_ACT_MAX_PRIO)."""
    tc_nla.register()
    msg = tc_nla.TcaMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["header"]["type"] = tc_actions.RTM_NEWACTION
    msg["attrs"] = [["TCA_ROOT_TAB", {"attrs": [[f"TCA_ACT_PRIO_{i}", action]
                                                for i, action in enumerate(actions, 1)]}]]
    msg.encode()
    return bytes(msg.data)


def dump_messages(count: int) -> list[bytes]:
    """An RTM_GETACTION dump's answer for `count` sample actions, one message per TCA_ACT_MAX_PRIO of them."""
    return [dump_message([sample_action(index, 1000, index, index)
                          for index in range(first + 1, min(first + tc_nla.TCA_ACT_MAX_PRIO, count) + 1)])
            for first in range(0, count, tc_nla.TCA_ACT_MAX_PRIO)]


def pyroute2_counters(raw: bytes) -> list[tc_actions.ActionCounter]:
    """The same counters through pyroute2's decoder, as the agent read them before the walk: the reference the
    tests hold the walk to, and the bench's comparison."""
    msg = tc_nla.TcaMsg(raw)
    msg.decode()
    found = []
    for _name, action in msg.get_attr("TCA_ROOT_TAB")["attrs"]:
        options = action.get_attr("TCA_ACT_OPTIONS") if action.get_attr("TCA_ACT_KIND") == "sample" else None
        if options is None or options.get_attr("TCA_SAMPLE_PARMS") is None:
            continue
        stats = action.get_attr("TCA_ACT_STATS")
        pkt64 = stats.get_attr("TCA_STATS_PKT64") if stats is not None else None
        packets = pkt64 if pkt64 is not None else stats.get_attr("TCA_STATS_BASIC")["packets"] if stats else 0
        found.append(tc_actions.ActionCounter(options.get_attr("TCA_SAMPLE_PARMS")["index"],
                                              options.get_attr("TCA_SAMPLE_RATE") or 0,
                                              options.get_attr("TCA_SAMPLE_PSAMPLE_GROUP") or 0, packets))
    return found


def _walk(messages: list[bytes]) -> int:
    return sum(len(tc_actions.parse_action_dump(raw)) for raw in messages)


def _pyroute2(messages: list[bytes]) -> int:
    return sum(len(pyroute2_counters(raw)) for raw in messages)


def _median_ms(parse: Any, messages: list[bytes], count: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        if parse(messages) != count:
            raise AssertionError(f"{parse.__name__} found the wrong number of actions")
        times.append(time.process_time() - started)
    return round(statistics.median(times) * 1000, 2)


def measure_dump(runs: int) -> dict[str, Any]:
    """Per action count: the walk's and pyroute2's CPU milliseconds for the whole dump, medians of runs."""
    out = {}
    for count in COUNTS:
        messages = dump_messages(count)
        out[str(count)] = {"walk_ms": _median_ms(_walk, messages, count, max(runs, 3)),
                           "pyroute2_ms": _median_ms(_pyroute2, messages, count, max(runs, 3))}
    return out


def format_dump(r: dict[str, Any]) -> str:
    parts = [f"{count} actions {v['walk_ms']:.2f} ms (pyroute2 {v['pyroute2_ms']:.1f} ms)" for count, v in r.items()]
    return "back-off:    counter dump parsed, CPU per tick: " + "; ".join(parts)
