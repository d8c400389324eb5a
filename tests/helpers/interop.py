"""Independent sFlow collectors read hwsflow's datagrams: nfdump's sfcapd and pmacct's sfacctd (Debian packages).

Each run starts the daemon on a free loopback UDP port, waits until it has bound
the port, replays the datagrams in order, then sentinel datagrams from another
exporter (127.0.0.2, agent 192.0.2.99), waits until the daemon has handled a
sentinel, stops it and reads what it printed.  The daemon runs in its own
process group, killed on teardown whatever happened, so nothing outlives a run.

Replay never loses a datagram silently: it waits while the daemon's socket holds
more than PACE_BYTES, and the runs report the socket's drop count from
/proc/net/udp.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from hwsflow.wire.sflow import DatagramBuilder
from tests.vm.guest import wait_for

SETUP_HINT = "run tools/setup-test-env (Debian packages nfdump-sflow and pmacct)"
DEADLINE = 120.0  # s, for each wait on a daemon: generous, never a fixed sleep
STOP_DEADLINE = 30.0
PACE_BYTES = 64 << 10  # replay waits while the daemon's socket holds more than this
LOOPBACK = "127.0.0.1"
SENTINEL_SOURCE = "127.0.0.2"
SENTINEL_AGENT = "192.0.2.99"
SENTINEL_IFINDEX = 0xABCDE  # no port of the tests has it


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: {SETUP_HINT}")
    return path


# ---------------------------------------------------------------- sockets


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class UdpSocket:
    rx_queue: int  # bytes waiting to be read
    drops: int  # datagrams the kernel dropped for lack of buffer


def udp_socket(port: int) -> UdpSocket | None:
    """The IPv4 socket bound to 127.0.0.1:port, from /proc/net/udp, or None while there is none."""
    local = f"0100007F:{port:04X}"  # /proc shows the address in host (little-endian) order
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return UdpSocket(rx_queue=int(fields[4].split(":")[1], 16), drops=int(fields[-1]))
    return None


def sentinel_datagram(sequence: int) -> bytes:
    """One flow sample of an IPv4 frame (pmacct accounts IP only) on SENTINEL_IFINDEX, from SENTINEL_AGENT."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes((192, 0, 2, 99)), bytes((192, 0, 2, 98)))
    frame = bytes(12) + b"\x08\x00" + ip + struct.pack(">HHHH", 9, 9, 8, 0)
    builder = DatagramBuilder(SENTINEL_AGENT, sub_agent_id=99)
    builder.sequence = sequence
    builder.add_flow_sample(0, sequence, 0, SENTINEL_IFINDEX, 1, sequence, 0, SENTINEL_IFINDEX, 0, len(frame) + 4, 4,
                            frame)
    builder.flush(0)
    (datagram,) = builder.take()
    return datagram


class Replay:
    """Sends datagrams to a collector's port in order, paced by its receive queue; then sentinels.

    It sends from one CPU (loopback queues each datagram on the sending CPU's backlog, so one CPU keeps them
    in order).  Sentinels come from SENTINEL_SOURCE, as another exporter; nudge() sends one more now and
    then, because a collector may hold its latest records back until more arrive (pmacct's core hands its
    plugins full buffers only).
    """

    NUDGE_INTERVAL = 0.5  # s

    def __init__(self, port: int) -> None:
        self.port = port
        self.sentinels = 0
        self.last_nudge = 0.0

    def send(self, datagrams: list[bytes]) -> None:
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for datagram in datagrams:
                    wait_for(lambda: (udp_socket(self.port) or UdpSocket(0, 0)).rx_queue <= PACE_BYTES, DEADLINE,
                          f"the collector on port {self.port} to read its queue")
                    sock.sendto(datagram, (LOOPBACK, self.port))
            self.nudge()
        finally:
            os.sched_setaffinity(0, cpus)

    def nudge(self) -> None:
        """Send the next sentinel, at most every NUDGE_INTERVAL."""
        if time.monotonic() - self.last_nudge < self.NUDGE_INTERVAL:
            return
        self.sentinels += 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((SENTINEL_SOURCE, 0))
            sock.sendto(sentinel_datagram(self.sentinels), (LOOPBACK, self.port))
        self.last_nudge = time.monotonic()

    def until(self, condition: Callable[[], object]) -> Callable[[], object]:
        """A condition for Daemon.wait that nudges while it does not hold."""
        def check() -> object:
            found = condition()
            if not found:
                self.nudge()
            return found
        return check


# ---------------------------------------------------------------- daemons


class Daemon:
    """A collector process in its own process group, with its output in files; stop() leaves nothing behind."""

    def __init__(self, argv: list[str], workdir: Path, name: str, stop_signal: int) -> None:
        self.name = name
        self.out_path, self.err_path = workdir / f"{name}.out", workdir / f"{name}.err"
        self.stop_signal = stop_signal
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, condition: Callable[[], object], what: str) -> float:
        def done() -> object:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while waiting for {what}:\n"
                                   f"{self.errors()[-2000:]}")
            return condition()
        return wait_for(done, DEADLINE, what)

    def wait_bound(self, port: int) -> None:
        self.wait(lambda: udp_socket(port) is not None, f"{self.name} to bind UDP port {port}")

    def stop(self) -> int:
        """Stop it gracefully (its stop signal), by force after STOP_DEADLINE; then end any process it left."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait()
        self._kill_group()  # pmacct's plugin processes, if any outlived their parent
        return self.proc.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- sfcapd


@dataclass
class SfcapdView:
    """What sfcapd -E made of the replayed datagrams (the sentinel left out)."""

    flows: int  # flow records it printed for the replayed exporter
    packets: int  # their "in packets": sample count scaled by each sample's rate
    problems: list[str]  # its complaints: length errors, caught exceptions, skipped packets
    summary: dict[str, int]  # its closing line (Flows, Packets, Bytes, Sequence Errors, Bad Packets), sentinel included
    returncode: int
    socket_drops: int
    log: str = field(repr=False)


_SFCAPD_PROBLEM = re.compile(r"error|exception|skip udp|bad packet", re.I)
_SFCAPD_SUMMARY = re.compile(r"Flows: (\d+), Packets: (\d+), Bytes: (\d+), Sequence Errors: (\d+), Bad Packets: (\d+)")


def sfcapd_decode(datagrams: list[bytes], workdir: Path) -> SfcapdView:
    """Replay to `sfcapd -E` (sflowtool's strict parser, printing every decoded flow sample)."""
    port = free_udp_port()
    flowdir = workdir / "sfcapd-flows"
    flowdir.mkdir(parents=True, exist_ok=True)
    # -E prints to stdout, which a file would buffer until exit: line-buffered, progress can be watched
    argv = [_tool("stdbuf"), "-oL", _tool("sfcapd"), "-E", "-b", LOOPBACK, "-p", str(port), "-w", str(flowdir)]
    with Daemon(argv, workdir, "sfcapd", signal.SIGTERM) as daemon:
        daemon.wait_bound(port)
        replay = Replay(port)
        replay.send(datagrams)
        sentinel = re.compile(rf"ip exporter\s*=\s*{re.escape(SENTINEL_SOURCE)}\s")
        daemon.wait(replay.until(lambda: sentinel.search(daemon.output())), "sfcapd to print a sentinel's flow")
        drops = udp_socket(port).drops  # type: ignore[union-attr]  # bound: the daemon has handled a datagram
        returncode = daemon.stop()
        return _sfcapd_view(daemon.output(), daemon.errors(), returncode, drops)


def _sfcapd_view(stdout: str, stderr: str, returncode: int, drops: int) -> SfcapdView:
    flows = packets = 0
    for block in stdout.split("Flow Record:")[1:]:
        exporter = re.search(r"ip exporter\s*=\s*(\S+)", block)
        count = re.search(r"in packets\s*=\s*(\d+)", block)
        if exporter is None or count is None:
            raise AssertionError(f"sfcapd printed a flow record without exporter or packets:\n{block}")
        if exporter.group(1) == LOOPBACK:
            flows += 1
            packets += int(count.group(1))
    summary_match = _SFCAPD_SUMMARY.search(stderr)
    summary = dict(zip(("flows", "packets", "bytes", "sequence_errors", "bad_packets"),
                       map(int, summary_match.groups()))) if summary_match else {}
    problems = [line for line in stderr.splitlines() if _SFCAPD_PROBLEM.search(line) and not _SFCAPD_SUMMARY.search(line)]
    if not summary_match:
        problems.append("sfcapd printed no closing summary")
    return SfcapdView(flows, packets, problems, summary, returncode, drops, stderr)


# ---------------------------------------------------------------- sfacctd


@dataclass
class SfacctdView:
    """What sfacctd (renormalising, aggregating by input interface) counted, the sentinel left out."""

    packets_by_in_iface: dict[int, int]
    sequence_numbers: list[int]  # datagram sequence numbers it logged receiving from the replayed agent
    problems: list[str]  # its warnings, errors and discards
    returncode: int
    socket_drops: int
    log: str = field(repr=False)


_SFACCTD_RECEIVED = re.compile(r"Received sFlow packet from \[([^\]]+):\d+\] version \[5\] seqno \[(\d+)\]")
_SFACCTD_PROBLEM = re.compile(r"^(WARN|ERROR|CRIT|ALERT)|discard|missing|malformed", re.I)


def sfacctd_config(port: int, output: Path) -> str:
    return (
        "daemonize: false\n"
        "debug: true\n"  # logs every datagram it receives, with its sequence number
        f"sfacctd_ip: {LOOPBACK}\n"
        f"sfacctd_port: {port}\n"
        "sfacctd_renormalize: true\n"
        "plugins: print[acct]\n"
        "aggregate[acct]: in_iface\n"
        "print_output[acct]: csv\n"
        f"print_output_file[acct]: {output}\n"
        "print_output_file_append[acct]: true\n"
        "print_refresh_time[acct]: 1\n"
    )


def sfacctd_totals(datagrams: list[bytes], workdir: Path, agent: str = "192.0.2.1") -> SfacctdView:
    """Replay to sfacctd with sfacctd_renormalize and a print plugin keyed by in_iface, appending CSV."""
    port = free_udp_port()
    output = workdir / "sfacctd.csv"
    config = workdir / "sfacctd.conf"
    config.write_text(sfacctd_config(port, output))
    with Daemon([_tool("sfacctd"), "-f", str(config)], workdir, "sfacctd", signal.SIGINT) as daemon:
        daemon.wait_bound(port)
        replay = Replay(port)
        replay.send(datagrams)
        # the print plugin writes its cache every second: a sentinel's row comes after every earlier sample
        daemon.wait(replay.until(lambda: SENTINEL_IFINDEX in _csv_packets(output)),
                    "sfacctd to write a sentinel's row")
        drops = udp_socket(port).drops  # type: ignore[union-attr]  # bound: the daemon has handled a datagram
        returncode = daemon.stop()
        log = daemon.output() + daemon.errors()
    totals = _csv_packets(output)
    del totals[SENTINEL_IFINDEX]
    sequence_numbers = [int(seq) for source, seq in _SFACCTD_RECEIVED.findall(log) if source == agent]
    problems = [line for line in log.splitlines() if _SFACCTD_PROBLEM.search(line)]
    return SfacctdView(totals, sequence_numbers, problems, returncode, drops, log)


def _csv_packets(path: Path) -> dict[int, int]:
    """PACKETS summed per IN_IFACE over every complete row the print plugin appended so far."""
    totals: dict[int, int] = {}
    if not path.exists():
        return totals
    columns: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a row being written
        cells = line.strip().split(",")
        if cells[0] == "IN_IFACE":
            columns = cells  # the plugin writes its header again with each refresh
            continue
        row = dict(zip(columns, cells))
        iface = int(row["IN_IFACE"])
        totals[iface] = totals.get(iface, 0) + int(row["PACKETS"])
    return totals
