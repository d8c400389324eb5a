"""Guest side of the accounting tests: are sampling_rate, sample_pool and drops numbers a collector can trust?

Run by tests/vm/scenarios.py in the shared boot; everything goes under
out["accounting"], and tests/vm/test_vm_accounting.py and test_vm_interop.py
judge it on the host.

* estimate: EST_FRAMES frames through a port sampled 1-in-EST_RATE; the samples,
  the tc sample action's packet counter after the traffic and after a pool
  re-sync, and the datagrams (replayed to sfcapd and sfacctd on the host).
* loss: two ports sampled 1-in-1, the agent stopped (SIGSTOP) while a burst
  crosses port A only, so its small psample socket buffer overflows; the kernel's
  own counts (tc, /proc/net/netlink) say how many samples were lost, and where.

The test frames are IPv4/UDP (pmacct accounts IP samples only) addressed to a MAC
that is not the port's, so the guest's stack drops them unanswered; their UDP
payload carries frames.MAGIC, a tag and an index, like tests/vm/frames.py's.

Run as `python -m tests.vm.scenarios_accounting IFACE TAG COUNT [FIRST]` inside
the namespace to send frames.  Stdlib only: it runs under software emulation.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

from tests.vm import frames
from tests.vm.guest import NS, TRAFFIC_DEADLINE, AgentProcess, Collector, COLLECTOR_V4, add_veth, sh, tc_json, wait_for

PORT_A, PEER_A = "hsa0", "hsa0x"
PORT_B, PEER_B = "hsa1", "hsa1x"
GROUP_BASE = 3100  # apart from the pipeline scenario's groups

# estimate: 1-in-2 keeps sFlow's 95% bound honest: it ignores the (1 - 1/rate) factor of the binomial
# variance, so at rate 2 a correct agent misses it with ~0.6% probability (~4% at rate 16)
EST_RATE = 2
EST_FRAMES = 4000  # ~2000 samples: a bound of ~4.4%
EST_LATE = 40  # frames after the pool re-sync; (1/2)**40 that none is sampled
EST_POLLING = 2  # s
TAG_EST, TAG_LATE, TAG_EST_BARRIER = 20, 21, 22

# loss
LOSS_RCVBUF = 65536  # the smallest the config allows; the kernel doubles it for overhead
LOSS_POLLING = 1  # s: counter samples mark the pool re-syncs
LOSS_PRE, LOSS_BURST, LOSS_POST = 50, 1000, 20
TAG_A_PRE, TAG_B_PRE, TAG_A_BURST, TAG_A_POST, TAG_B_POST = 30, 31, 32, 33, 34

# converge: another program's sample filter on B feeds A's psample group, so A's pool runs ahead of the
# count of A's own action by CONV_FOREIGN; then A's own traffic (more than that lead) must bring it back
CONV_POLLING = 5  # s: re-syncs seldom land inside a burst (one that does leaves what is queued, see the test)
CONV_PRE, CONV_FOREIGN, CONV_TRAFFIC, CONV_LATE = 20, 400, 800, 20
FOREIGN_PRIO = 9
TAG_CONV_PRE, TAG_FOREIGN, TAG_CONV, TAG_CONV_LATE = 40, 41, 42, 43

# Ethernet + IPv4 + UDP to a MAC that is not the port's: the receiving stack drops it as PACKET_OTHERHOST
_ID = struct.Struct(">4sHI")  # magic, tag, index: frames.MAGIC's layout
FRAME_LEN = 60  # the Ethernet minimum without FCS
_UDP_LEN = FRAME_LEN - 14 - 20
_PAD = bytes(_UDP_LEN - 8 - _ID.size)


def _ipv4_header() -> bytes:
    head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + _UDP_LEN, 0, 0, 64, 17, 0,
                       bytes((198, 51, 100, 1)), bytes((198, 51, 100, 2)))
    total = sum(struct.unpack(">10H", head))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return head[:10] + struct.pack(">H", ~total & 0xFFFF) + head[12:]


# UDP checksum 0: none, so the index can change without recomputing anything
_PREFIX = frames.DST + frames.SRC + b"\x08\x00" + _ipv4_header() + struct.pack(">HHHH", 40000, 40001, _UDP_LEN, 0)


def make_frame(tag: int, index: int) -> bytes:
    return _PREFIX + _ID.pack(frames.MAGIC, tag, index) + _PAD


def identify(header: bytes) -> tuple[int, int] | None:
    """(tag, index) of one of these frames from its sampled header, or None."""
    if not header.startswith(_PREFIX) or len(header) < len(_PREFIX) + _ID.size:
        return None
    magic, tag, index = _ID.unpack_from(header, len(_PREFIX))
    return (tag, index) if magic == frames.MAGIC else None


def send(ifname: str, tag: int, count: int, first: int = 0) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for index in range(first, first + count):
            sock.send(make_frame(tag, index))


def send_from_namespace(peer: str, tag: int, count: int, first: int = 0) -> None:
    sh("ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.scenarios_accounting",
       peer, str(tag), str(count), str(first))


# ---------------------------------------------------------------- reading the kernel's own counts


def action_packets(port: str) -> int:
    """Packets counted by the tc sample action of hwsflow's ingress filter on the port."""
    found = [action["stats"]["packets"]
             for flt in tc_json("filter", "show", "dev", port, "ingress") if "options" in flt
             for action in flt["options"].get("actions", []) if action.get("kind") == "sample"]
    if len(found) != 1:
        raise RuntimeError(f"port {port}: expected one sample action, found {len(found)}")
    return found[0]


def netlink_row(pid: int) -> dict[str, int]:
    """Rmem, Drops and Inode of the process's generic-netlink socket in /proc/net/netlink: psample's."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    lines = Path("/proc/net/netlink").read_text().splitlines()
    columns = lines[0].split()
    rows = [dict(zip(columns, line.split())) for line in lines[1:]]
    found = [row for row in rows if int(row["Inode"]) in inodes and row["Eth"] == "16"]  # NETLINK_GENERIC
    if len(found) > 1:  # the column shows only groups 1 to 32, so it is a tie-breaker, not the test
        found = [row for row in found if int(row["Groups"], 16)]
    if len(found) != 1:
        raise RuntimeError(f"agent {pid}: expected one psample socket in /proc/net/netlink, found {found}")
    return {key: int(found[0][key]) for key in ("Rmem", "Drops", "Inode")}


def udp_errors() -> dict[str, int]:
    """The guest's UDP receive-buffer and error counters (IPv4): a datagram lost on loopback shows here."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    names, values = lines[0][1:], [int(v) for v in lines[1][1:]]
    return {k: v for k, v in zip(names, values) if k in ("InErrors", "RcvbufErrors")}


def thread_states(pid: int) -> list[str]:
    """Each thread's name, state, kernel wait channel and system call: where a stuck agent sits."""
    found = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            parts = [(task / name).read_text().strip() for name in ("comm", "wchan", "syscall")]
            stat = (task / "stat").read_text()
        except OSError as err:
            found.append(f"{task.name}: {err}")
            continue
        found.append(f"{task.name} {parts[0]} state={stat[stat.rindex(')') + 2]} wchan={parts[1]} syscall={parts[2]}")
    return found


def all_stopped(pid: int) -> bool:
    """Whether every thread of the process is in the stopped state (SIGSTOP is delivered asynchronously)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        if stat[stat.rindex(")") + 2] != "T":
            return False
    return True


# ---------------------------------------------------------------- agent and collector


def agent_config(ports: str, polling: int, rcvbuf: int | None = None) -> str:
    return (
        "agent: 192.0.2.1\n"
        f"targets: ['{COLLECTOR_V4[0]}:{COLLECTOR_V4[1]}']\n"
        "sampling: 1\n"
        "header: 128\n"
        f"polling: {polling}\n"
        f"group_base: {GROUP_BASE}\n"
        + (f"rcvbuf: {rcvbuf}\n" if rcvbuf is not None else "")
        + f"ports:\n{ports}"
    )


def wait_all(collector: Collector, tag: int, count: int, what: str) -> float:
    everything = set(range(count))
    return wait_for(lambda: collector.seen("v4", tag) >= everything, TRAFFIC_DEADLINE, what)


class Run:
    """One agent and the collector for one scenario; close() always stops both and keeps what they left."""

    def __init__(self, rwdir: Path, name: str, config: str, result: dict) -> None:
        self.result = result
        self.collector = Collector()
        try:
            self.agent = AgentProcess(rwdir, name, config)
        except BaseException:
            self.collector.stop()
            raise

    def snapshot(self) -> dict:
        """What the kernel and the collector show now: kept when a scenario fails, to say why."""
        found: dict = {"seen": {}}
        for port in (PORT_A, PORT_B):
            try:
                found[port] = tc_json("filter", "show", "dev", port, "ingress")
            except RuntimeError as err:
                found[port] = str(err)
        try:
            found["netlink"] = netlink_row(self.agent.proc.pid)
        except (OSError, RuntimeError) as err:
            found["netlink"] = str(err)
        with self.collector.lock:
            blobs = list(self.collector.datagrams["v4"])
        for tag in range(TAG_EST, TAG_CONV_LATE + 1):
            indexes = self.collector.seen("v4", tag)
            if indexes:
                found["seen"][tag] = [len(indexes), min(indexes), max(indexes)]
        found["datagrams"] = len(blobs)
        found["agent_threads"] = thread_states(self.agent.proc.pid)
        return found

    def close(self) -> None:
        self.agent.proc.send_signal(signal.SIGCONT)  # a stopped agent would never act on SIGTERM
        self.result["exit"] = self.agent.stop()
        self.result["log"] = self.agent.log_path.read_text()
        self.result["datagrams"] = self.collector.stop()["v4"]

    def counter_samples_after(self, port: str, tag: int, index: int) -> int:
        """Counter samples of the port in datagrams after the one carrying the sample of frame (tag, index).

        Samples and counter samples enter datagrams in the order the agent makes them, so these counter
        samples were made after that frame's sample was handled.
        """
        marker = frames.MAGIC + struct.pack(">HI", tag, index)
        needle = len(port).to_bytes(4, "big") + port.encode()  # the port name record (0:1005)
        with self.collector.lock:
            blobs = list(self.collector.datagrams["v4"])
        for i, blob in enumerate(blobs):
            if marker in blob:
                return sum(later.count(needle) for later in blobs[i + 1:])
        return 0

    def wait_resynced(self, port: str, tag: int, index: int) -> float:
        """Wait until the port's pool was re-synced from tc after frame (tag, index) was handled.

        The agent re-syncs right before each counter sample; of the counter samples made after that frame,
        the first one's re-sync may have begun before it, the second one's cannot have.
        """
        return wait_for(lambda: self.counter_samples_after(port, tag, index) >= 2, TRAFFIC_DEADLINE,
                        f"two counter samples of {port} after frame {tag}/{index}")


@contextmanager
def scenario_run(rwdir: Path, out: dict, name: str, config: str, result: dict) -> Iterator[Run]:
    """A Run for scenario `name`: what the kernel showed if it fails, always closed, its guest seconds kept."""
    acc = out.setdefault("accounting", {})
    started = time.monotonic()
    run = Run(rwdir, name, config, result)
    try:
        yield run
    except Exception:
        result["failed_at"] = run.snapshot()
        raise
    finally:
        run.close()
        acc[f"{name}_s"] = time.monotonic() - started
        acc["elapsed_s"] = acc.get("elapsed_s", 0.0) + acc[f"{name}_s"]


# ---------------------------------------------------------------- scenarios


def scenario_estimate(rwdir: Path, out: dict) -> None:
    """EST_FRAMES frames through PORT_A at 1-in-EST_RATE; PORT_B, at 1-in-1, carries barrier frames."""
    acc = out.setdefault("accounting", {})
    add_veth(PORT_A, PEER_A)
    add_veth(PORT_B, PEER_B)
    acc["ifindex"] = {p: int(Path(f"/sys/class/net/{p}/ifindex").read_text()) for p in (PORT_A, PORT_B)}
    result = acc["estimate"] = {"rate": EST_RATE, "frames": EST_FRAMES, "late": EST_LATE}
    config = agent_config(f"  - name: {PORT_A}\n    sampling: {EST_RATE}\n  - name: {PORT_B}\n", polling=EST_POLLING)
    with scenario_run(rwdir, out, "estimate", config, result) as run:
        result["ready_s"] = run.agent.wait_ready()
        t0 = time.monotonic()
        send_from_namespace(PEER_A, TAG_EST, EST_FRAMES)
        result["send_s"] = time.monotonic() - t0
        # the barrier's sample is queued on the psample socket after every sample of the traffic: once it
        # reached the collector, so did they
        send_from_namespace(PEER_B, TAG_EST_BARRIER, 1)
        result["export_wait_s"] = wait_all(run.collector, TAG_EST_BARRIER, 1, "the first barrier")
        result["tc_after_traffic"] = action_packets(PORT_A)
        result["resync_wait_s"] = run.wait_resynced(PORT_A, TAG_EST_BARRIER, 0)
        send_from_namespace(PEER_A, TAG_LATE, EST_LATE)
        send_from_namespace(PEER_B, TAG_EST_BARRIER, 1, first=1)
        wait_for(lambda: 1 in run.collector.seen("v4", TAG_EST_BARRIER), TRAFFIC_DEADLINE, "the second barrier")
        result["tc_final"] = {PORT_A: action_packets(PORT_A), PORT_B: action_packets(PORT_B)}
        result["udp_errors"] = udp_errors()


def scenario_loss(rwdir: Path, out: dict) -> None:
    """Samples of PORT_A lost while the agent is stopped; PORT_B carries traffic only before and after.

    Between the loss and the first sample that reveals it, the pool is re-synced from tc (whose count
    already includes the lost samples' packets): the pool must still count each packet once.
    """
    result = out.setdefault("accounting", {})["loss"] = {
        "rcvbuf": LOSS_RCVBUF, "pre": LOSS_PRE, "burst": LOSS_BURST, "post": LOSS_POST}
    config = agent_config(f"  - name: {PORT_A}\n  - name: {PORT_B}\n", polling=LOSS_POLLING, rcvbuf=LOSS_RCVBUF)
    with scenario_run(rwdir, out, "loss", config, result) as run:
        result["ready_s"] = run.agent.wait_ready()
        pid = run.agent.proc.pid
        result["udp_errors_before"] = udp_errors()
        send_from_namespace(PEER_A, TAG_A_PRE, LOSS_PRE)
        send_from_namespace(PEER_B, TAG_B_PRE, LOSS_PRE)
        wait_all(run.collector, TAG_A_PRE, LOSS_PRE, "every sample of A before the stop")
        wait_all(run.collector, TAG_B_PRE, LOSS_PRE, "every sample of B before the stop")
        result["netlink_before"] = netlink_row(pid)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all_stopped(pid), TRAFFIC_DEADLINE, "the agent to stop")
        send_from_namespace(PEER_A, TAG_A_BURST, LOSS_BURST)
        result["netlink_stopped"] = netlink_row(pid)
        os.kill(pid, signal.SIGCONT)
        # the samples queued before the overrun are handled before the pool is re-synced below (and without
        # NETLINK_NO_ENOBUFS the kernel would drop every new sample until this queue is empty)
        result["drain_wait_s"] = wait_for(lambda: netlink_row(pid)["Rmem"] == 0, TRAFFIC_DEADLINE,
                                          "the agent to drain its psample socket")
        result["netlink_drained"] = netlink_row(pid)
        result["tc_after_burst"] = action_packets(PORT_A)
        result["resync_wait_s"] = run.wait_resynced(PORT_A, TAG_A_BURST, first_seen(run.collector, TAG_A_BURST))
        # B's samples are the first the agent handles after the loss: an agent that pinned socket losses on
        # whichever port samples next (as hsflowd does) would report them on B
        send_from_namespace(PEER_B, TAG_B_POST, LOSS_PRE)
        send_from_namespace(PEER_A, TAG_A_POST, LOSS_POST)
        wait_all(run.collector, TAG_B_POST, LOSS_PRE, "every sample of B after the stop")
        wait_all(run.collector, TAG_A_POST, LOSS_POST, "every sample of A after the stop")
        result["netlink_after"] = netlink_row(pid)
        result["tc"] = {PORT_A: action_packets(PORT_A), PORT_B: action_packets(PORT_B)}
        result["udp_errors_after"] = udp_errors()


def sample_group(port: str) -> int:
    """The psample group of hwsflow's ingress sample action on the port."""
    found = [action["group"] for flt in tc_json("filter", "show", "dev", port, "ingress") if "options" in flt
             for action in flt["options"].get("actions", []) if action.get("kind") == "sample"]
    if len(found) != 1:
        raise RuntimeError(f"port {port}: expected one sample action, found {found}")
    return int(found[0])


def scenario_converge(rwdir: Path, out: dict) -> None:
    """A's pool forced ahead of tc's count by a foreign filter on B sending to A's group, then brought back."""
    result = out.setdefault("accounting", {})["converge"] = {}
    config = agent_config(f"  - name: {PORT_A}\n", polling=CONV_POLLING)
    with scenario_run(rwdir, out, "converge", config, result) as run:
        result["ready_s"] = run.agent.wait_ready()
        send_from_namespace(PEER_A, TAG_CONV_PRE, CONV_PRE)
        wait_all(run.collector, TAG_CONV_PRE, CONV_PRE, "every sample of A's first frames")
        group = result["group"] = sample_group(PORT_A)
        sh("tc", "qdisc", "add", "dev", PORT_B, "clsact")
        try:
            sh("tc", "filter", "add", "dev", PORT_B, "ingress", "prio", str(FOREIGN_PRIO), "matchall",
               "action", "sample", "rate", "1", "group", str(group))
            send_from_namespace(PEER_B, TAG_FOREIGN, CONV_FOREIGN)
            wait_all(run.collector, TAG_FOREIGN, CONV_FOREIGN, "every foreign sample, as A's")
        finally:
            sh("tc", "qdisc", "del", "dev", PORT_B, "clsact", check=False)
        result["tc_after_foreign"] = action_packets(PORT_A)
        result["resync_wait_s"] = run.wait_resynced(PORT_A, TAG_FOREIGN, CONV_FOREIGN - 1)
        send_from_namespace(PEER_A, TAG_CONV, CONV_TRAFFIC)
        wait_all(run.collector, TAG_CONV, CONV_TRAFFIC, "every sample of A's traffic")
        run.wait_resynced(PORT_A, TAG_CONV, CONV_TRAFFIC - 1)
        send_from_namespace(PEER_A, TAG_CONV_LATE, CONV_LATE)
        wait_all(run.collector, TAG_CONV_LATE, CONV_LATE, "every sample of A's late frames")
        result["tc_final"] = action_packets(PORT_A)


def sample_rate(port: str) -> int:
    """The rate of hwsflow's ingress sample action on the port, as the kernel has it."""
    found = [action["rate"] for flt in tc_json("filter", "show", "dev", port, "ingress") if "options" in flt
             for action in flt["options"].get("actions", []) if action.get("kind") == "sample"]
    if len(found) != 1:
        raise RuntimeError(f"port {port}: expected one sample action, found {found}")
    return int(found[0])


AUTO_DEFAULT = 7  # the top-level sampling an auto port gets when its link reports no speed
AUTO_DUMMY = "hsd0"  # a dummy link: no speed in sysfs
AUTO_SOCKET = "/run/hwsflow-auto/control.sock"


def scenario_auto(rwdir: Path, out: dict) -> None:
    """`sampling: auto` on a veth (whose speed sysfs shows) and on a dummy link (none): the kernel's rates."""
    from hwsflow.core.control import Status
    from hwsflow.linux.control_socket import request
    result = out.setdefault("accounting", {})["auto"] = {}
    sh("ip", "link", "add", AUTO_DUMMY, "type", "dummy")
    sh("ip", "link", "set", AUTO_DUMMY, "up")
    try:
        socket_path = AUTO_SOCKET  # on the guest's own /run: the shared rwdir cannot hold a unix socket
        config = agent_config(f"  - name: {PORT_A}\n    sampling: auto\n  - name: {AUTO_DUMMY}\n    sampling: auto\n",
                              polling=0).replace("sampling: 1\n", f"sampling: {AUTO_DEFAULT}\ncontrol_socket: {socket_path}\n", 1)
        with scenario_run(rwdir, out, "auto", config, result) as run:
            result["ready_s"] = run.agent.wait_ready()
            result["speed"] = {p: Path(f"/sys/class/net/{p}/speed").read_text().strip() if _readable_speed(p) else ""
                               for p in (PORT_A, AUTO_DUMMY)}
            result["rate"] = {p: sample_rate(p) for p in (PORT_A, AUTO_DUMMY)}
            status = request(socket_path, Status(), timeout=TRAFFIC_DEADLINE)["status"]
            result["status_ports"] = {row["port"]: [row["rate"], row.get("rate_from")] for row in status["ports"]}
    finally:
        sh("ip", "link", "del", AUTO_DUMMY, check=False)


def _readable_speed(port: str) -> bool:
    try:
        Path(f"/sys/class/net/{port}/speed").read_text()
        return True
    except OSError:  # EINVAL: the driver reports no speed
        return False


def first_seen(collector: Collector, tag: int) -> int:
    """The lowest index of a frame with this tag whose sample reached the collector, once one did."""
    wait_for(lambda: collector.seen("v4", tag), TRAFFIC_DEADLINE, f"a sample of a frame tagged {tag}")
    return min(collector.seen("v4", tag))


SCENARIOS = [scenario_estimate, scenario_loss, scenario_converge, scenario_auto]


if __name__ == "__main__":
    send(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
