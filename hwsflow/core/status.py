"""`hwsflow status`: the per-port sample rates the agent keeps, and the table the CLI prints.

Pure: the agent fills a plain dict (the JSON `hwsflow status --json` prints)
and render() turns it into text.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hwsflow.core.ovs_bridges import OvsSflow
from hwsflow.core.ovs_notices import sflow_note

RATE_WINDOW = 5  # ticks (one a second) the samples-per-second figure averages over

NOT_IN_HW_NOTE = ("not_in_hw: the filter runs in software only, so only the slow path (packets that "
                  "miss the hardware) is sampled; hardware-forwarded traffic is not seen")


@dataclass
class RateMeter:
    """Samples per second and the time of the last sample, per port, from 1 s counter readings.

    The hot path only counts; this is read once a tick, so no clock is read per sample.
    """

    window: int = RATE_WINDOW
    _history: dict[int, deque[tuple[float, int]]] = field(default_factory=dict)
    _last_change: dict[int, float] = field(default_factory=dict)

    def update(self, now: float, counts: dict[int, int]) -> None:
        for key in set(self._history) - set(counts):
            del self._history[key]
            self._last_change.pop(key, None)
        for key, count in counts.items():
            history = self._history.setdefault(key, deque(maxlen=self.window + 1))
            if history and count != history[-1][1]:
                self._last_change[key] = now
            history.append((now, count))

    def rate(self, key: int) -> float:
        history = self._history.get(key)
        if not history or len(history) < 2:
            return 0.0
        (t0, c0), (t1, c1) = history[0], history[-1]
        return max(c1 - c0, 0) / (t1 - t0) if t1 > t0 else 0.0

    def age(self, key: int, now: float) -> float | None:
        """Seconds since the count last moved (tick resolution), None if it never did."""
        when = self._last_change.get(key)
        return None if when is None else now - when


def _age(value: float | None) -> str:
    if value is None:
        return "never"
    if value < 1.5:
        return "<1s"
    if value < 120:
        return f"{value:.0f}s"
    return f"{value / 60:.0f}m" if value < 7200 else f"{value / 3600:.0f}h"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _port_rows(ports: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["PORT", "IFINDEX", "GROUP", "RATE", "IN-FORCE", "DIRECTION", "OFFLOAD", "SAMPLES/S", "DROPS", "POOL",
             "LAST", "FROM"]]
    for port in ports:
        groups = ",".join(str(g) for g in port["groups"]) or "-"
        rows.append([
            port["port"], str(port["ifindex"]) if port["ifindex"] is not None else "-", groups,
            f"1-in-{port['rate']}", _in_force(port), port["direction"], port["offload"], f"{port['samples_per_s']:.1f}",
            str(port["drops"]), str(port["pool"]), _age(port["last_sample_age_s"]),
            "runtime" if port["runtime"] else "config",
        ])
    return rows


def _ovsdb_line(ovsdb: dict[str, Any]) -> str:
    line = f"open vswitch: {ovsdb['state']} ({ovsdb['socket']})"
    if ovsdb.get("missing_bridges"):
        line += f"; no bridge {', '.join(ovsdb['missing_bridges'])} (followed: sampled once created)"
    return line


def _ovs_lines(attachments: list[dict[str, Any]]) -> list[str]:
    """Who is behind a port, as Open vSwitch knows it, and its own sFlow on the port's bridge."""
    lines = []
    for attachment in attachments:
        names = f"bridge {attachment['bridge']}, port {attachment['port']}"
        if attachment["interface"] != attachment["port"]:
            names += f", interface {attachment['interface']}"
        if attachment["type"] != "system":
            names += f" ({attachment['type']})"
        ids = "".join(f", {key}={value}" for key, value in attachment["external_ids"].items())
        lines.append(f"open vswitch {names}{ids}")
    for bridge, sflow in {a["bridge"]: a["bridge_sflow"] for a in attachments if a["bridge_sflow"]}.items():
        lines.append(sflow_note(bridge, OvsSflow(tuple(sflow["targets"]), sflow["sampling"])))
    return lines


def _in_force(port: dict[str, Any]) -> str:
    """The rate the filters run at, marked when back-off raised it above the configured one."""
    in_force = port.get("rate_in_force", port["rate"])
    return f"1-in-{in_force}" + ("*" if in_force != port["rate"] else "")


def render(status: dict[str, Any]) -> str:
    """The readable form of an agent status."""
    agent = status["agent"]
    lines = [
        f"hwsflow {agent['version']}, pid {agent['pid']}, up {_age(agent['uptime_s'])}, "
        f"agent address {agent['address']}, config {agent['config']}; sample path: {agent.get('sample_path', '?')}",
        f"psample: {agent['psample']}; socket overruns: {agent['enobufs']} ENOBUFS, "
        f"{agent['kernel_drops'] if agent['kernel_drops'] is not None else '?'} messages dropped by the kernel; "
        f"{agent['foreign']} samples of other groups ignored, {agent['malformed']} malformed",
    ]
    if agent.get("internal_errors"):
        lines.append(f"internal errors: {agent['internal_errors']} psample batches dropped (a bug: see the log)")
    reloads = agent.get("reloads", {})
    if any(reloads.values()):
        lines.append(f"reloads: {reloads.get('applied', 0)} applied, {reloads.get('rejected', 0)} rejected "
                     "(invalid file: see the log)")
    if agent.get("metrics"):
        lines.append(f"metrics: http://{agent['metrics']}/metrics")
    ovsdb = agent.get("ovsdb")
    if ovsdb and (ovsdb.get("bridge_rules") or ovsdb["state"] == "connected"):  # no line about an absent optional OVS
        lines.append(_ovsdb_line(ovsdb))
    lines.append("")
    ports = status["ports"]
    if ports:
        lines += _table(_port_rows(ports))
    else:
        lines.append("no port is sampled")
    for port in ports:
        if port.get("error"):
            lines.append(f"  {port['port']}: {port['error']}")
        if port.get("rate_from", "configured") != "configured":
            lines.append(f"  {port['port']}: 1-in-{port['rate']} ({port['rate_from']})")
        if port.get("rate_in_force", port["rate"]) != port["rate"] or port.get("rate_reason"):
            lines.append(f"  {port['port']}: *backed off to 1-in-{port.get('rate_in_force')} from 1-in-{port['rate']}: "
                         f"{port.get('rate_reason') or 'the rate in force'}")
        lines += [f"  {port['port']}: {text}" for text in _ovs_lines(port.get("ovs") or [])]
    if any(p["offload"] == "not_in_hw" for p in ports):
        lines.append(NOT_IN_HW_NOTE)
    if any(p["offload"] == "receive-only" for p in ports):
        lines.append("receive-only: hwsflow installed no filter; it exports what others' rules send to the group")
    disabled = status.get("disabled", [])
    if disabled:
        lines.append(f"disabled at runtime (until reload or restart): {', '.join(disabled)}")
    if any(p["runtime"] for p in ports):
        lines.append("runtime: set by `hwsflow enable`; the config file is unchanged and wins at reload or restart")
    lines.append("")
    lines += _table([["COLLECTOR", "SENT", "ERRORS", "LAST ERROR"]] + [
        [c["target"], str(c["sent"]), str(c["errors"]), c["last_error"] or "-"] for c in status["collectors"]
    ])
    return "\n".join(lines) + "\n"
