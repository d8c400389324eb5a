"""Security checks at code level: packet bytes never reach the logs; no network socket listens.

Sampled headers can hold customer data: they go to the configured collectors and
nowhere else, the journal included, whatever the message and whatever path it
takes (exported, foreign, malformed, an error).  And the agent opens no socket
the network can reach: its only listener is the configured Unix control socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.psample_target import FAMILY, INGRESS_GROUP, EGRESS_GROUP, kernel_sample, seeds
from hwsflow.wire import psample
from hwsflow.daemon.agent import Agent
from hwsflow.linux.collectors import open_collectors
from hwsflow.core.config import parse_config
from hwsflow.core.control import Status
from hwsflow.linux.control_socket import NotRunning, request
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.wire.netlink import NLMSG_HDR, attr
from hwsflow.core.pipeline import SamplePipeline

MARKER = b"CUSTOMER-SECRET-c0ffee-7a1d"
PROBE = b"probe"  # sent after the samples, until the refusing collector reports its error
PORT_IFINDEX = 0x12345


def marker_forms() -> list[str]:
    """How the bytes would look in a log line: as text, or as hex however it is grouped or cased."""
    return [MARKER.decode(), MARKER.hex(), MARKER.hex().upper(), MARKER.hex(" "), MARKER.hex(":"),
            repr(MARKER)[2:-1]]


def with_marker(**fields: object) -> bytes:
    return psample.build_message(kernel_sample(**fields), FAMILY)


def marked_messages() -> list[bytes]:
    """The marker on every path a message can take: exported, foreign, malformed, not a sample."""
    data = b"\x02" * 12 + b"\x08\x00" + MARKER * 4
    usual = with_marker(data=data)
    cut_short = bytearray(with_marker(data=data, oif=3))
    NLMSG_HDR.pack_into(cut_short, 0, len(cut_short) + 64, FAMILY, 0, 0, 0)  # framing broken
    bad_attr = bytearray(usual) + attr(psample.ATTR_ORIGSIZE, b"\x01")  # a truncated attribute after DATA
    NLMSG_HDR.pack_into(bad_attr, 0, len(bad_attr), FAMILY, 0, 0, 0)
    notice = bytearray(usual)
    notice[NLMSG_HDR.size] = psample.CMD_NEW_GROUP
    other_family = bytearray(usual)
    NLMSG_HDR.pack_into(other_family, 0, len(usual), FAMILY + 1, 0, 0, 0)
    return [
        usual, with_marker(data=data, group=EGRESS_GROUP, oif=3, iif=7), with_marker(data=data, group=77),
        with_marker(data=data, cookie=MARKER, tunnel=psample.TunnelKey(id=int.from_bytes(MARKER[:8], "big"), geneve_opts=MARKER), out_tc=1, latency=5),
        bytes(bad_attr), bytes(notice), bytes(other_family), usual + with_marker(data=data, seq=9), bytes(cut_short),
    ]


@dataclass
class Harness:
    """An Agent whose psample socket is one end of a datagram socketpair, sending to a local collector."""

    agent: Agent
    feed: socket.socket
    collector: socket.socket


class FakePsample:
    """What Agent._on_readable asks of its PsampleSocket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.enobufs = 0

    def fileno(self) -> int:
        return self.sock.fileno()


def make_harness(tmp_path: Path) -> Harness:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    refusing = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refusing.bind(("127.0.0.1", 0))
    closed_port = refusing.getsockname()[1]
    refusing.close()  # nothing listens there: sends to it fail with ECONNREFUSED, an error path that logs
    config = parse_config(f"targets: ['127.0.0.1:{collector.getsockname()[1]}', '127.0.0.1:{closed_port}']\n"
                          f"control_socket: {tmp_path}/control.sock\nports: [{{name: p0}}]\n")
    agent = Agent(config)
    agent.collectors, errors = open_collectors([(t.host, t.port) for t in config.targets])
    assert not errors
    agent.builder = DatagramBuilder("192.0.2.1", 0, config.datagram_size)
    agent.groups.bind(PORT_IFINDEX, "p0", "ingress", 10, 128, wanted=INGRESS_GROUP)
    agent.groups.bind(PORT_IFINDEX, "p0", "egress", 10, 128, wanted=EGRESS_GROUP)
    agent.pipeline = SamplePipeline(agent.builder, agent.groups, FAMILY)
    feed, receive = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # keeps message boundaries, as netlink
    receive.setblocking(False)
    agent.psample = FakePsample(receive)  # type: ignore[assignment]  # a socketpair stands in for psample
    return Harness(agent, feed, collector)


async def run_agent_read_path(harness: Harness, reads: list[bytes]) -> None:
    """Deliver reads through the event loop as the agent does (add_reader), then flush and check collectors."""
    agent = harness.agent
    assert agent.pipeline is not None and agent.psample is not None
    loop = asyncio.get_running_loop()
    loop.add_reader(agent.psample.fileno(), agent._on_readable)
    before = agent.pipeline.stats.messages
    for read in reads:
        harness.feed.send(read)
    expected = before + sum(_messages_in(read) for read in reads)
    deadline = time.monotonic() + 20
    while agent.pipeline.stats.messages < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    loop.remove_reader(agent.psample.fileno())
    agent._send_finished(flush=True)
    refusing = agent.collectors.collectors[1]
    agent.collectors.send([PROBE])
    while not refusing.errors and time.monotonic() < deadline:  # its ICMP port unreachable comes back async
        await asyncio.sleep(0.01)
        agent.collectors.send([PROBE])
    agent._warn_collectors()


def _messages_in(read: bytes) -> int:
    """Messages the pipeline counts in one read (it stops at broken framing, counting it once)."""
    count, pos = 0, 0
    while pos < len(read):
        count += 1
        length = NLMSG_HDR.unpack_from(read, pos)[0] if len(read) - pos >= NLMSG_HDR.size else 0
        if length < NLMSG_HDR.size or pos + length > len(read):
            break
        pos = (pos + length + 3) & ~3
    return count


def assert_no_marker(text: str, where: str) -> None:
    for form in marker_forms():
        assert form not in text, f"packet bytes ({form!r}) reached {where}"


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)  # every level, the root logger's too (asyncio's callback errors go there)
    return caplog


def test_packet_bytes_reach_the_collector_and_never_the_logs(tmp_path, all_logs, capfd):
    harness = make_harness(tmp_path)
    try:
        asyncio.run(run_agent_read_path(harness, marked_messages()))
        exported = b"".join(iter(lambda: harness.collector.recv(65536), PROBE))  # the datagrams before the probes
        harness.agent.psample.sock.close()  # the socket's own error path: it logs
        harness.agent._on_readable()
    finally:
        harness.agent.collectors.close()
        harness.feed.close()
        harness.collector.close()
    stats = harness.agent.pipeline.stats
    assert MARKER in exported  # the bytes did flow through this path, to the collector
    assert stats.samples >= 3 and stats.malformed == 2 and stats.foreign == 1 and stats.other == 2
    logged = all_logs.text
    assert "sending fails (ECONNREFUSED)" in logged and "psample socket:" in logged  # the capture sees errors
    escaped = [r for r in all_logs.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    assert not escaped, logged  # no exception escaped a callback
    assert_no_marker(logged, "the logs")
    out, err = capfd.readouterr()
    assert_no_marker(out + err, "stdout or stderr")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(seeds()), st.integers(2, 4000), st.binary(max_size=3)), min_size=1,
                max_size=6))
def test_marked_bytes_anywhere_in_any_message_never_reach_the_logs(tmp_path_factory, edits):
    """The marker inserted anywhere in real and damaged messages (the seeds skip fuzz's 2 setup bytes)."""
    reads = []
    for seed, position, damage in edits:
        body = seed[2:]
        position %= len(body) + 1
        reads.append(body[:position] + MARKER + damage + body[position:])
    handler = _ListHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    harness = make_harness(tmp_path_factory.mktemp("sec"))
    try:
        asyncio.run(run_agent_read_path(harness, reads))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        harness.agent.collectors.close()
        harness.feed.close()
        harness.collector.close()
        harness.agent.psample.sock.close()
    assert not [line for line in handler.lines if line.startswith(("asyncio ERROR", "asyncio WARNING"))], \
        handler.lines
    assert_no_marker("\n".join(handler.lines), "the logs")


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# ---------------------------------------------------------------- sockets


_PROC_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6", "icmp", "icmp6", "packet",
                "unix", "netlink")
_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listening socket


@dataclass(frozen=True)
class SocketEntry:
    table: str
    fields: tuple[str, ...]


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(match[1]))
    return inodes


def socket_table(pid: int) -> dict[int, SocketEntry]:
    """Every socket the kernel lists in the process's network namespace, by inode."""
    found: dict[int, SocketEntry] = {}
    for table in _PROC_TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        header, *rows = path.read_text().splitlines()
        column = header.split().index("Inode") if table in ("unix", "netlink", "packet") else 9
        for row in rows:
            fields = tuple(row.split())
            if len(fields) > column and fields[column].isdigit():
                found[int(fields[column])] = SocketEntry(table, fields)
    return found


def _hex_address(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    return address, int(port, 16)


def proc_address(host: str, port: int) -> str:
    """host:port as /proc/net/tcp{,6} writes a local address: each 32-bit word of the address in host order."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    words = [packed[i:i + 4][::-1] for i in range(0, len(packed), 4)]
    return f"{b''.join(words).hex().upper()}:{port:04X}"


def listening_problems(pid: int, control_socket: str, collector_port: int,
                       metrics: tuple[str, int] | None = None) -> list[str]:
    """What of the process's sockets the network could reach, beyond connected collector sockets and
    the one TCP listener of the configured metrics endpoint; a configured endpoint that is not
    listening is a problem too."""
    table = socket_table(pid)
    problems = []
    expected = proc_address(*metrics) if metrics is not None else None
    found = 0
    for inode in sorted(socket_inodes(pid)):
        entry = table.get(inode)
        if entry is None:
            problems.append(f"socket {inode}: in no table of /proc/net, its kind unknown")
        elif entry.table in ("tcp", "tcp6"):
            state = "listening" if entry.fields[3] == _TCP_LISTEN else "connected"
            if state == "listening" and entry.fields[1] == expected:
                found += 1
                continue
            problems.append(f"socket {inode}: a {state} TCP socket {entry.fields[1]}")
        elif entry.table in ("udp", "udp6"):
            remote = _hex_address(entry.fields[2])
            if remote[1] != collector_port:  # a connected UDP socket takes datagrams from its peer alone
                problems.append(f"socket {inode}: UDP {entry.fields[1]} not connected to a collector")
        elif entry.table == "unix":
            accepting = int(entry.fields[3], 16) & _UNIX_ACCEPTING
            path = entry.fields[7] if len(entry.fields) > 7 else ""
            if accepting and path != control_socket:
                problems.append(f"socket {inode}: a listening Unix socket {path or '(abstract or unnamed)'}")
        elif entry.table != "netlink":  # netlink talks to the kernel only
            problems.append(f"socket {inode}: a {entry.table} socket, which takes traffic from the network")
    if metrics is not None and found != 1:
        problems.append(f"{found} TCP listeners on the metrics endpoint {metrics[0]}:{metrics[1]}, not one")
    return problems


def _free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("metrics_host", [None, "127.0.0.1", "::1"])
def test_the_running_agent_listens_only_on_its_control_socket(tmp_path, metrics_host):
    """`hwsflow run` as root on this host: psample is absent here, so it waits for the module, with
    its control socket, rtnetlink and collector sockets open, which is what is checked.  Without
    `metrics` nothing listens on the network; with it, exactly the configured endpoint does."""
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    port = collector.getsockname()[1]
    control = str(tmp_path / "run" / "control.sock")
    config = tmp_path / "hwsflow.yaml"
    metrics = (metrics_host, _free_tcp_port(metrics_host)) if metrics_host is not None else None
    endpoint = f"[{metrics_host}]" if metrics_host and ":" in metrics_host else metrics_host
    config.write_text(f"targets: ['127.0.0.1:{port}', '[::1]:{port}']\ncontrol_socket: {control}\n"
                      + (f"metrics: '{endpoint}:{metrics[1]}'\n" if metrics else "")
                      + "ports: [{name: hwsfsec0}]\n")  # a port that does not exist: no tc state is touched
    agent = subprocess.Popen([sys.executable, "-m", "hwsflow", "run", "--config", str(config)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status = _wait_for_status(control, agent, deadline=time.monotonic() + 60)
        problems = listening_problems(agent.pid, control, port, metrics)
        kinds = sorted({entry.table for inode, entry in socket_table(agent.pid).items()
                        if inode in socket_inodes(agent.pid)})
    finally:
        agent.send_signal(signal.SIGTERM)
        output = agent.communicate(timeout=30)[0].decode(errors="replace")
        collector.close()
    assert status["ok"], output
    assert problems == [], f"{problems}\n{output}"
    assert {"unix", "netlink", "udp"} <= set(kinds), kinds  # the check saw the sockets it is about


LISTENERS = """
import socket, sys, time
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::1", 0))
unix = socket.socket(socket.AF_UNIX); unix.bind(sys.argv[1]); unix.listen()
print("ready", flush=True)
time.sleep(60)
"""


def test_the_socket_check_finds_what_listens(tmp_path):
    """The check above can fail: a TCP listener, a bound UDP socket and another Unix listener are found."""
    child = subprocess.Popen([sys.executable, "-c", LISTENERS, str(tmp_path / "other.sock")], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        problems = listening_problems(child.pid, str(tmp_path / "control.sock"), 6343)
    finally:
        child.kill()
        child.wait(10)
    assert len(problems) == 3, problems
    assert any("listening TCP" in p for p in problems) and any("UDP" in p for p in problems)
    assert any(f"listening Unix socket {tmp_path}/other.sock" in p for p in problems)


def test_the_socket_check_finds_a_listener_other_than_the_metrics_endpoint(tmp_path):
    """The metrics endpoint is the one TCP listener allowed: another address, or none at all, is found."""
    child = subprocess.Popen([sys.executable, "-c", LISTENERS, str(tmp_path / "other.sock")], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        listening = [e.fields[1] for i, e in socket_table(child.pid).items()
                     if i in socket_inodes(child.pid) and e.table == "tcp"]
        host, port = "127.0.0.1", int(listening[0].split(":")[1], 16)
        allowed = listening_problems(child.pid, str(tmp_path / "other.sock"), 6343, (host, port))
        elsewhere = listening_problems(child.pid, str(tmp_path / "other.sock"), 6343, (host, port + 1))
    finally:
        child.kill()
        child.wait(10)
    assert allowed and not any("TCP" in p for p in allowed), allowed  # the UDP socket is still found
    assert any("listening TCP" in p for p in elsewhere) and any("0 TCP listeners" in p for p in elsewhere)


def _wait_for_status(control: str, agent: subprocess.Popen, deadline: float) -> dict:
    while True:
        try:
            return request(control, Status(), timeout=5)
        except (NotRunning, OSError):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not answer on {control}: "
                                     f"{agent.communicate(timeout=5)[0].decode(errors='replace')}") from None
            time.sleep(0.05)
