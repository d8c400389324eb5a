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


def dump_messages(count: int) -> list[bytes]:
    """An RTM_GETACTION dump's answer for `count` sample actions, one message per TCA_ACT_MAX_PRIO of them."""
    tc_nla.register()
    messages = []
    for first in range(0, count, tc_nla.TCA_ACT_MAX_PRIO):
        actions = [[f"TCA_ACT_PRIO_{i + 1}", {"attrs": [
            ["TCA_ACT_KIND", "sample"],
            ["TCA_ACT_OPTIONS", {"attrs": [
                ["TCA_SAMPLE_PARMS", {"index": index, "capab": 0, "action": tc_nla.TC_ACT_PIPE, "refcnt": 1,
                                      "bindcnt": 1}],
                ["TCA_SAMPLE_RATE", 1000], ["TCA_SAMPLE_TRUNC_SIZE", 128], ["TCA_SAMPLE_PSAMPLE_GROUP", index]]}],
            ["TCA_ACT_STATS", {"attrs": [["TCA_STATS_BASIC", {"bytes": 1500 * index, "packets": index}],
                                         ["TCA_STATS_PKT64", index]]}],
        ]}] for i, index in enumerate(range(first + 1, min(first + tc_nla.TCA_ACT_MAX_PRIO, count) + 1))]
        msg = tc_nla.TcaMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["header"]["type"] = tc_actions.RTM_NEWACTION
        msg["attrs"] = [["TCA_ROOT_TAB", {"attrs": actions}]]
        msg.encode()
        messages.append(bytes(msg.data))
    return messages


def _walk(messages: list[bytes]) -> int:
    return sum(len(tc_actions.parse_action_dump(raw)) for raw in messages)


def _pyroute2(messages: list[bytes]) -> int:
    """The same four numbers an action through pyroute2's decoder, as the agent read them before the walk."""
    found = []
    for raw in messages:
        msg = tc_nla.TcaMsg(raw)
        msg.decode()
        for _name, action in msg.get_attr("TCA_ROOT_TAB")["attrs"]:
            options, stats = action.get_attr("TCA_ACT_OPTIONS"), action.get_attr("TCA_ACT_STATS")
            found.append((options.get_attr("TCA_SAMPLE_PARMS")["index"], options.get_attr("TCA_SAMPLE_RATE"),
                          options.get_attr("TCA_SAMPLE_PSAMPLE_GROUP"), stats.get_attr("TCA_STATS_PKT64")))
    return len(found)


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
