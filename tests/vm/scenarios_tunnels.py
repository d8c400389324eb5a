"""Guest side of the tunnel scenarios: overlay traffic on metadata-mode VXLAN and Geneve devices.

Run by tests/vm/scenarios.py in the shared boot; everything goes under
out["tunnels"], and tests/vm/test_vm_tunnels.py judges it.

The agent watches two metadata-mode devices in the root namespace, TUN_VXLAN
(`type vxlan external`, UDP 4789) and TUN_GENEVE (`type geneve external`, UDP
6081), at 1-in-1, both directions.  Across the UNDERLAY veth pair, namespace TNS
holds one ordinary (single-VNI) VXLAN or Geneve device per stream in STREAMS:
two tenants, each with its own VNI and its own outer source address, over IPv4
and IPv6 outer headers, on both encapsulations; tenant B's devices also set an
outer TOS.  Test frames sent out of those devices arrive encapsulated, are
decapsulated by the agent's devices and sampled at their ingress with the
tunnel key.  For egress, frames from TNS enter EGRESS_PORT, whose tc filter
sets a tunnel key (`tunnel_key set`) and redirects them out of a tunnel device:
sampled there, at egress, before encapsulation.

Then the real Open vSwitch (tests/vm/ovs.py, hw-offload on) with its own VXLAN
port (`type=vxlan options:remote_ip=flow options:key=flow`): the agent samples
the vxlan_sys_4789 device Open vSwitch made, while two more tenants (IPv4 and
IPv6 outer) send through it; out["ovs_vxlan"].

Each scenario removes everything it made, the UDP 4789 and 6081 sockets
included (the second needs 4789 free), and Open vSwitch is stopped with its
datapath deleted.

Run as `python -m tests.vm.scenarios_tunnels COUNT DEVICE:TAG ...` inside TNS to
send COUNT test frames (tests/vm/frames.py) out of each device.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterator

from tests.vm import frames
from tests.vm.guest import COLLECTOR_V4, COLLECTOR_V6, TRAFFIC_DEADLINE, AgentProcess, Collector, ifindex, sh, wait_for

TNS = "hvtn"
TUN_VXLAN, TUN_GENEVE = "hvxl0", "hgnv0"
UNDERLAY, UNDERLAY_PEER = "hsu0", "hsu0x"
EGRESS_PORT, EGRESS_PEER = "hse0", "hse0x"
# each tenant's outer addresses: its own in TNS, and its own on the agent's side (a route in TNS picks the
# source, which Geneve devices cannot be given)
TENANT_V4 = {"a": "10.99.0.2", "b": "10.99.0.3"}
TENANT_V6 = {"a": "fd99::2", "b": "fd99::3"}
ROOT_V4 = {"a": "10.99.0.1", "b": "10.99.0.4"}
ROOT_V6 = {"a": "fd99::1", "b": "fd99::4"}
TENANT_TOS = {"a": 0, "b": 0x10}  # 0 is left out of the kernel's key: it must come out as 0
DSTPORT = {"vxlan": 4789, "geneve": 6081}
FRAMES = 20  # per stream, all sampled (1-in-1)
GROUP_BASE = 3200  # apart from the other scenarios' groups


@dataclass(frozen=True)
class Stream:
    """One tenant's traffic over one encapsulation and outer family, from its own device in TNS."""

    tag: int
    device: str  # in TNS
    kind: str  # vxlan or geneve
    family: int  # outer IP version
    tenant: str
    vni: int
    src: str  # outer source (the tenant's address in TNS) and destination (the agent's side)
    dst: str
    tos: int

    @property
    def port(self) -> str:
        """The agent's device that decapsulates this stream."""
        return TUN_VXLAN if self.kind == "vxlan" else TUN_GENEVE


def _streams() -> list[Stream]:
    found = []
    for kind in ("vxlan", "geneve"):
        for family in (4, 6):
            for tenant, vni in (("a", 100 if kind == "vxlan" else 300), ("b", 200 if kind == "vxlan" else 400)):
                found.append(Stream(
                    tag=40 + len(found), device=f"ht{kind[0]}{family}{tenant}", kind=kind, family=family,
                    tenant=tenant, vni=vni, src=(TENANT_V4 if family == 4 else TENANT_V6)[tenant],
                    dst=(ROOT_V4 if family == 4 else ROOT_V6)[tenant], tos=TENANT_TOS[tenant]))
    return found


STREAMS = _streams()


@dataclass(frozen=True)
class EgressStream:
    """Frames entering EGRESS_PORT, given a tunnel key by tc and sent out of `port`: sampled at its egress."""

    tag: int
    port: str
    vni: int
    src: str
    dst: str
    dst_port: int


EGRESS = [EgressStream(60, TUN_VXLAN, 500, ROOT_V4["a"], TENANT_V4["a"], 4789),
          EgressStream(61, TUN_GENEVE, 600, ROOT_V6["b"], TENANT_V6["b"], 6081)]


def ns(*argv: str) -> str:
    return sh("ip", "netns", "exec", TNS, *argv)


def link_mac(name: str, run) -> str:
    return json.loads(run("ip", "-j", "link", "show", name))[0]["address"]


def setup() -> None:
    sh("ip", "netns", "add", TNS)
    # the underlay: IPv4 and IPv6 (no DAD: the addresses are usable at once)
    sh("ip", "link", "add", UNDERLAY, "type", "veth", "peer", "name", UNDERLAY_PEER, "netns", TNS)
    for address in ROOT_V4.values():
        sh("ip", "addr", "add", f"{address}/24", "dev", UNDERLAY)
    for address in ROOT_V6.values():
        sh("ip", "addr", "add", f"{address}/64", "dev", UNDERLAY, "nodad")
    sh("ip", "link", "set", UNDERLAY, "up")
    for address in TENANT_V4.values():
        ns("ip", "addr", "add", f"{address}/24", "dev", UNDERLAY_PEER)
    for address in TENANT_V6.values():
        ns("ip", "addr", "add", f"{address}/64", "dev", UNDERLAY_PEER, "nodad")
    ns("ip", "link", "set", UNDERLAY_PEER, "up")
    ns("ip", "link", "set", "lo", "up")
    for tenant in TENANT_V4:
        for root, own in ((ROOT_V4[tenant], TENANT_V4[tenant]), (ROOT_V6[tenant], TENANT_V6[tenant])):
            ns("ip", "route", "add", root, "dev", UNDERLAY_PEER, "src", own)
    # static neighbours: no frame waits for (or is dropped while) ARP or ND resolves
    root_mac = link_mac(UNDERLAY, sh)
    tenant_mac = link_mac(UNDERLAY_PEER, ns)
    for address in [*ROOT_V4.values(), *ROOT_V6.values()]:
        ns("ip", "neigh", "replace", address, "lladdr", root_mac, "dev", UNDERLAY_PEER, "nud", "permanent")
    for address in [*TENANT_V4.values(), *TENANT_V6.values()]:
        sh("ip", "neigh", "replace", address, "lladdr", tenant_mac, "dev", UNDERLAY, "nud", "permanent")
    # the agent's side: metadata-mode devices, as Open vSwitch's vxlan_sys_4789 and genev_sys_6081 are
    sh("ip", "link", "add", TUN_VXLAN, "type", "vxlan", "external", "dstport", str(DSTPORT["vxlan"]))
    sh("ip", "link", "add", TUN_GENEVE, "type", "geneve", "external")
    for port in (TUN_VXLAN, TUN_GENEVE):
        sh("sysctl", "-qw", f"net.ipv6.conf.{port}.disable_ipv6=1")  # no router solicitations: test frames only
        sh("ip", "link", "set", port, "up")
    # the tenants' side: one single-VNI device per stream
    for s in STREAMS:
        ns("ip", "link", "add", s.device, "type", s.kind, "id", str(s.vni), "remote", s.dst,
           *(("local", s.src, "dstport", str(DSTPORT["vxlan"])) if s.kind == "vxlan" else ()),
           *(("tos", hex(s.tos)) if s.tos else ()))
        ns("sysctl", "-qw", f"net.ipv6.conf.{s.device}.disable_ipv6=1")
        ns("ip", "link", "set", s.device, "up")
    # egress: EGRESS_PORT's ingress gives each stream's frames a tunnel key and sends them out of its device
    sh("ip", "link", "add", EGRESS_PORT, "type", "veth", "peer", "name", EGRESS_PEER, "netns", TNS)
    sh("sysctl", "-qw", f"net.ipv6.conf.{EGRESS_PORT}.disable_ipv6=1")
    ns("sysctl", "-qw", f"net.ipv6.conf.{EGRESS_PEER}.disable_ipv6=1")
    sh("ip", "link", "set", EGRESS_PORT, "up")
    ns("ip", "link", "set", EGRESS_PEER, "up")
    sh("tc", "qdisc", "add", "dev", EGRESS_PORT, "ingress")
    for prio, e in enumerate(EGRESS, start=1):
        # the frames' first payload bytes are frames.MAGIC and the tag: u32 matches them at offset 0 of the
        # network header (ETHERTYPE is not IP, so the "network header" starts right after the Ethernet one)
        sh("tc", "filter", "add", "dev", EGRESS_PORT, "ingress", "prio", str(prio), "protocol", "all",
           "u32", "match", "u32", hex(int.from_bytes(frames.MAGIC, "big")), "0xffffffff", "at", "0",
           "match", "u16", hex(e.tag), "0xffff", "at", "4",
           "action", "tunnel_key", "set", "src_ip", e.src, "dst_ip", e.dst, "id", str(e.vni),
           "dst_port", str(e.dst_port),
           "action", "mirred", "egress", "redirect", "dev", e.port)


def teardown() -> None:
    """Remove everything setup() made; each step on its own, so one failure leaves no other thing behind."""
    for argv in (("ip", "netns", "del", TNS), ("ip", "link", "del", TUN_VXLAN), ("ip", "link", "del", TUN_GENEVE),
                 ("ip", "link", "del", UNDERLAY), ("ip", "link", "del", EGRESS_PORT)):
        sh(*argv, check=False)


def config_for(ports: list[str], direction: str) -> str:
    return (
        "agent: 192.0.2.1\n"
        f"targets: ['{COLLECTOR_V4[0]}:{COLLECTOR_V4[1]}', '[{COLLECTOR_V6[0]}]:{COLLECTOR_V6[1]}']\n"
        "sampling: 1\n"
        "header: 128\n"
        "polling: 0\n"
        f"group_base: {GROUP_BASE}\n"
        "ports:\n"
        + "".join(f"  - name: {port}\n    direction: {direction}\n" for port in ports)
    )


def send_in_namespace(namespace: str, pairs: list[tuple[str, int]]) -> None:
    """FRAMES test frames out of each (device, tag) in the namespace."""
    sh("ip", "netns", "exec", namespace, sys.executable, "-m", "tests.vm.scenarios_tunnels", str(FRAMES),
       *(f"{device}:{tag}" for device, tag in pairs))


def wait_all_seen(collector: Collector, tags: list[int], which: tuple[str, ...]) -> float:
    everything = set(range(FRAMES))
    return wait_for(lambda: all(collector.seen(k, tag) >= everything for k in which for tag in tags),
                    TRAFFIC_DEADLINE, f"every sample of the frames tagged {tags} at the collectors {which}")


@contextmanager
def agent_run(rwdir: Path, name: str, config: str, result: dict) -> Iterator[Collector]:
    """A collector and a ready agent; both stopped whatever happens, the exit status, log and datagrams kept."""
    collector = Collector()
    try:
        agent = AgentProcess(rwdir, name, config)
        try:
            result["ready_s"] = agent.wait_ready()
            yield collector
        finally:
            result["exit"] = agent.stop()
            result["log"] = agent.log_path.read_text()
    finally:
        result["datagrams"] = collector.stop()


def scenario_tunnels(rwdir: Path, out: dict) -> None:
    """Two tenants' overlay traffic through the metadata-mode devices, sampled at ingress; and frames given
    a tunnel key by tc, sampled at the devices' egress."""
    result = out["tunnels"] = {
        "streams": [asdict(s) for s in STREAMS], "egress": [asdict(e) for e in EGRESS], "frames": FRAMES}
    started = time.monotonic()
    try:
        setup()
        result["ifindex"] = {name: ifindex(name) for name in (TUN_VXLAN, TUN_GENEVE, EGRESS_PORT, UNDERLAY)}
        result["links"] = {name: sh("ip", "-d", "link", "show", name) for name in (TUN_VXLAN, TUN_GENEVE)}
        with agent_run(rwdir, "tunnels", config_for([TUN_VXLAN, TUN_GENEVE], "both"), result) as collector:
            send_in_namespace(TNS, [(s.device, s.tag) for s in STREAMS])
            send_in_namespace(TNS, [(EGRESS_PEER, e.tag) for e in EGRESS])
            result["wait_s"] = wait_all_seen(collector, [s.tag for s in STREAMS] + [e.tag for e in EGRESS],
                                             ("v4", "v6"))
            result["tc"] = {name: sh("tc", "-s", "filter", "show", "dev", name, direction)
                            for name in (TUN_VXLAN, TUN_GENEVE, EGRESS_PORT)
                            for direction in ("ingress", "egress") if name != EGRESS_PORT or direction == "ingress"}
    finally:
        teardown()
        result["left_behind"] = [name for name in (TUN_VXLAN, TUN_GENEVE, UNDERLAY, EGRESS_PORT)
                                 if Path(f"/sys/class/net/{name}").exists()]
        result["udp_bound"] = udp_bound(tuple(DSTPORT.values()))
        result["elapsed_s"] = time.monotonic() - started


def udp_bound(ports: tuple[int, ...]) -> list[int]:
    """Which of the UDP ports something in this namespace still has a socket bound to."""
    found = []
    for port in ports:
        for family in (socket.AF_INET, socket.AF_INET6):
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
                except OSError:
                    found.append(port)
    return sorted(set(found))


# Open vSwitch's own VXLAN port (remote_ip=flow, key=flow): its kernel device is a metadata-mode vxlan_sys_4789
OVS_NS = "hvto"
OVS_UNDERLAY, OVS_UNDERLAY_PEER = "hso0", "hso0x"
OVS_BRIDGE, OVS_PORT = "br-hvt", "hvtvx"
OVS_STREAMS = [
    Stream(tag=70, device="hov4a", kind="vxlan", family=4, tenant="a", vni=700, src="10.98.0.2", dst="10.98.0.1", tos=0),
    Stream(tag=71, device="hov6b", kind="vxlan", family=6, tenant="b", vni=800, src="fd98::3", dst="fd98::4",
           tos=0x10),
]


def ovs_ns(*argv: str) -> str:
    return sh("ip", "netns", "exec", OVS_NS, *argv)


def setup_ovs_tenants() -> None:
    """The tenants' namespace and underlay for the Open vSwitch scenario, one single-VNI device per stream."""
    sh("ip", "netns", "add", OVS_NS)
    sh("ip", "link", "add", OVS_UNDERLAY, "type", "veth", "peer", "name", OVS_UNDERLAY_PEER, "netns", OVS_NS)
    for s in OVS_STREAMS:
        plen = "24" if s.family == 4 else "64"
        sh("ip", "addr", "add", f"{s.dst}/{plen}", "dev", OVS_UNDERLAY, *(("nodad",) if s.family == 6 else ()))
        ovs_ns("ip", "addr", "add", f"{s.src}/{plen}", "dev", OVS_UNDERLAY_PEER, *(("nodad",) if s.family == 6 else ()))
    sh("ip", "link", "set", OVS_UNDERLAY, "up")
    ovs_ns("ip", "link", "set", OVS_UNDERLAY_PEER, "up")
    root_mac, tenant_mac = link_mac(OVS_UNDERLAY, sh), link_mac(OVS_UNDERLAY_PEER, ovs_ns)
    for s in OVS_STREAMS:
        ovs_ns("ip", "neigh", "replace", s.dst, "lladdr", root_mac, "dev", OVS_UNDERLAY_PEER, "nud", "permanent")
        sh("ip", "neigh", "replace", s.src, "lladdr", tenant_mac, "dev", OVS_UNDERLAY, "nud", "permanent")
        ovs_ns("ip", "link", "add", s.device, "type", "vxlan", "id", str(s.vni), "remote", s.dst, "local", s.src,
            "dstport", "4789", *(("tos", hex(s.tos)) if s.tos else ()))
        ovs_ns("sysctl", "-qw", f"net.ipv6.conf.{s.device}.disable_ipv6=1")
        ovs_ns("ip", "link", "set", s.device, "up")


OVS_MAX_IDLE_MS = 600_000


def ovs_tc(device: str) -> str:
    return sh("tc", "-s", "filter", "show", "dev", device, "ingress")


def scenario_ovs_vxlan(rwdir: Path, out: dict) -> None:
    """Open vSwitch (hw-offload on) with a flow-based VXLAN port; the agent samples its vxlan_sys_4789."""
    from tests.vm import ovs

    result = out["ovs_vxlan"] = {"streams": [asdict(s) for s in OVS_STREAMS], "frames": FRAMES}
    started = time.monotonic()
    try:
        setup_ovs_tenants()
        # max-idle: Open vSwitch removes a datapath flow (and its tc flower rule) 10 s after its last packet;
        # under software emulation on a busy host the wait for the samples can outlast that before tc is read
        result["ovs_start_s"] = ovs.start({"hw-offload": "true", "max-idle": str(OVS_MAX_IDLE_MS)})
        device = result["device"] = ovs.add_tunnel_port(OVS_BRIDGE, OVS_PORT, "vxlan", remote_ip="flow", key="flow")
        result["ifindex"] = ifindex(device)
        result["link"] = sh("ip", "-d", "link", "show", device)
        with agent_run(rwdir, "ovs_vxlan", config_for([device], "ingress"), result) as collector:
            send_in_namespace(OVS_NS, [(s.device, s.tag) for s in OVS_STREAMS])
            result["wait_s"] = wait_all_seen(collector, [s.tag for s in OVS_STREAMS], ("v4",))
            # the samples can all be in before ovs-vswitchd's handlers have put the flows into tc: wait for
            # them (the test judges what was there), and show how long that took
            try:
                result["offload_wait_s"] = wait_for(lambda: all(f"enc_key_id {s.vni}" in ovs_tc(device)
                                                                for s in OVS_STREAMS), TRAFFIC_DEADLINE,
                                                    "Open vSwitch's offloaded decap flows")
            except TimeoutError as e:
                result["offload_wait_s"] = str(e)
            result["tc"] = ovs_tc(device)
            result["vsctl_show"] = ovs.vsctl("show")
    finally:
        try:
            result["ovs_stop"] = ovs.stop()
        finally:
            sh("ip", "netns", "del", OVS_NS, check=False)
            sh("ip", "link", "del", OVS_UNDERLAY, check=False)
            result["udp_bound"] = udp_bound((4789,))
            result["elapsed_s"] = time.monotonic() - started


SCENARIOS = [scenario_tunnels, scenario_ovs_vxlan]


def send(count: int, pairs: list[str]) -> None:
    """COUNT frames out of each DEVICE:TAG, interleaved, so that no stream waits for another."""
    sockets = []
    for pair in pairs:
        device, tag = pair.rsplit(":", 1)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((device, 0))
        sockets.append((sock, int(tag)))
    for index in range(count):
        for sock, tag in sockets:
            sock.send(frames.make_frame(tag, index))
    for sock, _ in sockets:
        sock.close()


if __name__ == "__main__":
    send(int(sys.argv[1]), sys.argv[2:])
