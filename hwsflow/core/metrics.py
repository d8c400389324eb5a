"""hwsflow's health as Prometheus metric families, mapped from the agent's status.

Pure: families() takes the dict `hwsflow status --json` prints (Agent.status())
and returns prometheus_client metric families; nothing here counts anything of
its own, so a scrape and `hwsflow status` taken at the same moment agree.  Names
follow Prometheus's conventions: the hwsflow_ prefix, _total on counters, base
units, and labels of bounded cardinality (error texts never become labels).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

PORT_LABELS = ("port", "ifindex", "direction")
# Open vSwitch's identity of a port (bridge, OVS port name) joins PORT_LABELS here once the Open vSwitch
# issue (15) puts it in the status rows; nothing in the status carries it yet.
COLLECTOR_LABELS = ("collector",)
# the OFFLOAD column's values, as a state set: one series per state, 1 for the port's current one
OFFLOAD_STATES = ("in_hw", "not_in_hw", "mixed", "unknown", "receive-only", "failed")
# hwsflow_collector_last_error's value when the last error has no errno: a name that does not resolve,
# a connect() refused before any send, or a datagram whose code sendmmsg dropped
ERROR_WITHOUT_ERRNO = -1
# the path the per-sample loop runs when the status does not say: only the Python one exists so far
DEFAULT_PATH = "python"


def error_code(last_error: str) -> int:
    """A collector's last error as a number: 0 for none, the errno for a send error ("ECONNREFUSED"
    is 111 on Linux), ERROR_WITHOUT_ERRNO for the others."""
    if not last_error:
        return 0
    return getattr(errno, last_error, ERROR_WITHOUT_ERRNO) if last_error.startswith("E") else ERROR_WITHOUT_ERRNO


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _agent(agent: Mapping[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily("hwsflow_build", "hwsflow's version and the per-sample path it runs (python or "
                            "compiled)", labels=("version", "path"))
    info.add_metric([str(agent["version"]), str(agent.get("path", DEFAULT_PATH))], {})
    yield info
    joined = _gauge("hwsflow_psample_joined", "1 when the agent listens to psample's packets group, 0 while it "
                    "waits for the psample module")
    joined.add_metric([], 1 if agent["psample"] == "joined" else 0)
    yield joined
    for name, key, doc in (
        ("hwsflow_psample_samples_total", "samples", "psample messages of hwsflow's groups received"),
        ("hwsflow_psample_foreign_samples_total", "foreign", "samples of psample groups that are not hwsflow's, "
                                                              "ignored"),
        ("hwsflow_psample_malformed_messages_total", "malformed", "psample messages skipped as malformed"),
        ("hwsflow_psample_enobufs_total", "enobufs", "ENOBUFS errors on the psample socket (stays 0: "
                                                     "NETLINK_NO_ENOBUFS is set)"),
        ("hwsflow_internal_errors_total", "internal_errors", "psample batches dropped by a bug in hwsflow's "
                                                             "decoding (see the log)"),
    ):
        family = _counter(name, doc)
        family.add_metric([], agent[key])
        yield family
    drops = _counter("hwsflow_psample_kernel_drops_total", "psample messages the kernel could not queue on "
                     "hwsflow's socket (its drop count in /proc/net/netlink)")
    if agent["kernel_drops"] is not None:  # unknown while psample is not joined: no sample, not a 0
        drops.add_metric([], agent["kernel_drops"])
    yield drops
    reloads = _counter("hwsflow_reloads_total", "config reloads (SIGHUP) by outcome: applied, or rejected (an "
                       "invalid file; the running config stays)", labels=("outcome",))
    for outcome, count in sorted(agent["reloads"].items()):
        reloads.add_metric([outcome], count)
    yield reloads


def _port_families() -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
    return {
        "samples": _counter("hwsflow_port_samples_total", "samples received and exported for the port, both "
                            "directions together", PORT_LABELS),
        "drops": _counter("hwsflow_port_dropped_samples_total", "samples lost, from gaps in psample's per-group "
                          "sequence numbers: the drops every flow sample carries", PORT_LABELS),
        "pool": _counter("hwsflow_port_sample_pool_packets_total", "packets that could have been sampled (sFlow's "
                         "sample_pool before its 32-bit wrap)", PORT_LABELS),
        "rate": _gauge("hwsflow_port_sampling_rate", "configured sampling rate: 1 in N packets", PORT_LABELS),
        "current": _gauge("hwsflow_port_current_sampling_rate", "sampling rate of the filter in the kernel now, "
                          "1 in N (absent where hwsflow installed none)", PORT_LABELS),
        "offload": _gauge("hwsflow_port_offload", "the port's offload state (the OFFLOAD column): 1 for the current "
                          "state", (*PORT_LABELS, "state")),
        "sampled": _gauge("hwsflow_port_sampled", "1 when samples of the port can arrive (a filter of hwsflow's is "
                          "installed, or a receive-only group is bound), else 0", PORT_LABELS),
        "failed": _gauge("hwsflow_port_failed", "1 when (a direction of) the port could not be set up; reason is "
                         "a short code, the log and `hwsflow status` have the full text", (*PORT_LABELS, "reason")),
        "heals": _counter("hwsflow_port_heals_total", "filters reinstalled after another program removed or changed "
                          "them, by what was found", (*PORT_LABELS, "cause")),
        "runtime": _gauge("hwsflow_port_runtime_change", "1 when the port's settings come from `hwsflow enable`, "
                          "not the config file", PORT_LABELS),
    }


def _ports(ports: list[Mapping[str, Any]]) -> Iterator[Metric]:
    families = _port_families()
    for row in ports:
        labels = [str(row["port"]), str(row["ifindex"]), str(row["direction"])]
        families["samples"].add_metric(labels, row["samples"])
        families["drops"].add_metric(labels, row["drops"])
        families["pool"].add_metric(labels, row["pool_total"])
        families["rate"].add_metric(labels, row["rate"])
        if row["current_rate"] is not None:
            families["current"].add_metric(labels, row["current_rate"])
        for state in OFFLOAD_STATES:
            families["offload"].add_metric([*labels, state], 1 if row["offload"] == state else 0)
        families["sampled"].add_metric(labels, 0 if row["offload"] == "failed" else 1)
        if row["error"]:
            families["failed"].add_metric([*labels, str(row["error_code"])], 1)
        for cause, count in sorted(row["heals"].items()):
            families["heals"].add_metric([*labels, cause], count)
        families["runtime"].add_metric(labels, 1 if row["runtime"] else 0)
    yield from families.values()
    yield _ovs_info(ports)


OVS_LABELS = ("port", "ifindex", "bridge", "ovs_port", "iface_id", "vm_uuid")


def _ovs_info(ports: list[Mapping[str, Any]]) -> InfoMetricFamily:
    """Who is behind each port Open vSwitch knows, for joining on port and ifindex (one per Open vSwitch
    port: a tunnel device may carry several); an external_id that is not set is an empty label."""
    info = InfoMetricFamily("hwsflow_port_ovs", "the Open vSwitch bridge and port of a sampled port, and the "
                            "workload its Interface's external_ids name (iface-id, vm-uuid)", labels=OVS_LABELS)
    for row in ports:
        for ovs in row.get("ovs") or []:
            ids = ovs["external_ids"]
            info.add_metric([str(row["port"]), str(row["ifindex"]), ovs["bridge"], ovs["port"],
                             ids.get("iface-id", ""), ids.get("vm-uuid", "")], {})
    return info


def _collectors(collectors: list[Mapping[str, Any]]) -> Iterator[Metric]:
    sent = _counter("hwsflow_collector_datagrams_sent_total", "sFlow datagrams sent to the collector",
                    COLLECTOR_LABELS)
    errors = _counter("hwsflow_collector_send_errors_total", "datagrams that could not be sent to the collector",
                      COLLECTOR_LABELS)
    last = _gauge("hwsflow_collector_last_error", "the collector's last error: 0 none, > 0 the errno of a send "
                  f"error, {ERROR_WITHOUT_ERRNO} an error without one (a name that does not resolve, a refused "
                  "connect, a code sendmmsg dropped); `hwsflow status` has the text", COLLECTOR_LABELS)
    for collector in collectors:
        labels = [str(collector["target"])]
        sent.add_metric(labels, collector["sent"])
        errors.add_metric(labels, collector["errors"])
        last.add_metric(labels, error_code(collector["last_error"] or ""))
    yield from (sent, errors, last)


def families(status: Mapping[str, Any]) -> list[Metric]:
    """Every hwsflow metric family for one status snapshot, each family present even with no sample."""
    return [*_agent(status["agent"]), *_ports(status["ports"]), *_collectors(status["collectors"])]
