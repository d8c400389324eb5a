"""Guest-side probe: prove the psample kernel path works in the test VM.

Run as root inside the VM (see harness.run_guest):

    python guest_probe.py RWDIR

It loads the modules, wires a veth pair across a network namespace, puts a
matchall + sample filter on the root-namespace end, listens to psample's
"packets" multicast group on a raw generic-netlink socket, sends Ethernet
frames from the other namespace and writes what arrived to RWDIR/probe.json.
Exit status 0 means every step ran and every sent frame came back as a
sample.  The iproute2 CLI sets the scene (fine in a test probe); the
netlink side is stdlib only, so it checks the kernel and not a library.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

MODULES = ("psample", "act_sample", "cls_matchall", "sch_ingress", "veth", "cls_flower")
NETNS = "hvtx"
HOST_DEV = "hvp0"  # root namespace end, carries the sampling filter
PEER_DEV = "hvp0peer"  # in NETNS, sends the frames
GROUP = 7
RATE = 1
TRUNC = 128
FRAMES = 20
FRAME_LEN = 100  # below TRUNC, so DATA holds the whole frame
ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nothing in the guest reacts to it
MARKER = b"hwsflow-probe"
RECEIVE_DEADLINE = 60.0
REPORT_FILE = "probe.json"

# Generic netlink, from <linux/netlink.h> and <linux/genetlink.h>.
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
NLA_HDR = struct.Struct("=HH")  # len, type

PSAMPLE_CMD_SAMPLE = 0
PSAMPLE_ATTR_NAMES = {
    0: "IIFINDEX", 1: "OIFINDEX", 2: "ORIGSIZE", 3: "SAMPLE_GROUP", 4: "GROUP_SEQ",
    5: "SAMPLE_RATE", 6: "DATA", 7: "GROUP_REFCOUNT", 8: "TUNNEL", 9: "PAD",
    10: "OUT_TC", 11: "OUT_TC_OCC", 12: "LATENCY", 13: "TIMESTAMP", 14: "PROTO",
    15: "USER_COOKIE", 16: "SAMPLE_PROBABILITY",
}
IIFINDEX, ORIGSIZE, SAMPLE_GROUP, GROUP_SEQ, SAMPLE_RATE, DATA = 0, 2, 3, 4, 5, 6

CLONE_NEWNET = 0x40000000


def _align4(n: int) -> int:
    return (n + 3) & ~3


def nla(attr_type: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = NLA_HDR.pack(NLA_HDR.size + len(payload), attr_type) + payload
    return raw + b"\0" * (_align4(len(raw)) - len(raw))


def iter_nlattrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + NLA_HDR.size <= len(buf):
        length, attr_type = NLA_HDR.unpack_from(buf, off)
        if length < NLA_HDR.size:
            break
        yield attr_type & NLA_TYPE_MASK, buf[off + NLA_HDR.size : off + length]
        off += _align4(length)


def iter_nlmsgs(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each message in one datagram."""
    off = 0
    while off + NLMSG_HDR.size <= len(buf):
        length, msg_type, _flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size:
            break
        yield msg_type, seq, buf[off + NLMSG_HDR.size : off + length]
        off += _align4(length)


def resolve_genl_family(sock: socket.socket, name: str) -> tuple[int, dict[str, int]]:
    """Family id and multicast group ids of a generic netlink family."""
    seq = 1
    payload = GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0) + payload)
    while True:
        for msg_type, msg_seq, body in iter_nlmsgs(sock.recv(65536)):
            if msg_seq != seq:
                continue
            if msg_type == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", body)
                raise OSError(-err, f"CTRL_CMD_GETFAMILY {name}: {os.strerror(-err)}")
            if msg_type == NLMSG_DONE:
                raise OSError(errno.ENOENT, f"no reply for genl family {name}")
            family_id = -1
            groups: dict[str, int] = {}
            for attr_type, value in iter_nlattrs(body[GENL_HDR.size :]):
                if attr_type == CTRL_ATTR_FAMILY_ID:
                    (family_id,) = struct.unpack("=H", value[:2])
                elif attr_type == CTRL_ATTR_MCAST_GROUPS:
                    for _index, group in iter_nlattrs(value):
                        fields = dict(iter_nlattrs(group))
                        grp_name = fields[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0").decode()
                        (groups[grp_name],) = struct.unpack("=I", fields[CTRL_ATTR_MCAST_GRP_ID][:4])
            return family_id, groups


def decode_sample(body: bytes) -> dict[int, bytes] | None:
    """Attributes of a PSAMPLE_CMD_SAMPLE message, None for other commands."""
    cmd, _version, _reserved = GENL_HDR.unpack_from(body)
    if cmd != PSAMPLE_CMD_SAMPLE:
        return None
    return dict(iter_nlattrs(body[GENL_HDR.size :]))


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, sys.byteorder)


def build_frame(dst: bytes, src: bytes, index: int) -> bytes:
    header = dst + src + struct.pack("!H", ETHERTYPE) + MARKER + struct.pack("!I", index)
    return header + b"\xa5" * (FRAME_LEN - len(header))


def is_probe_frame(data: bytes) -> bool:
    return data[12:14] == struct.pack("!H", ETHERTYPE) and data[14 : 14 + len(MARKER)] == MARKER


def mac_of(dev: str) -> bytes:
    return bytes.fromhex(Path(f"/sys/class/net/{dev}/address").read_text().strip().replace(":", ""))


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block in network namespace ``name`` (as created by ``ip netns``).

    Python 3.11 has no os.setns, hence libc through ctypes.  Sockets made in
    the block stay in that namespace after switching back, and this avoids
    starting a second interpreter, which takes seconds under TCG.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back): {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(own)


def sh(*argv: str) -> str:
    """Run a command, raise with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


class Probe:
    """The probe's steps; each records its duration in ``report['steps']``."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {"steps": {}, "uptime_at_start": uptime(), "ok": False}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self.report["failed_step"] = name
            self.report["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.report["steps"][name] = round(time.monotonic() - start, 3)

    def run(self) -> bool:
        r = self.report
        r["kernel"] = os.uname().release
        with self.step("modprobe"):
            r["modules"] = {}
            for module in MODULES:
                done = subprocess.run(["modprobe", module], capture_output=True, text=True)
                r["modules"][module] = "ok" if done.returncode == 0 else f"error: {done.stderr.strip()}"
        with self.step("environment"):
            r["environment"] = environment_facts()
        with self.step("netns_veth"):
            sh("ip", "netns", "add", NETNS)
            with in_netns(NETNS):
                # No IPv6 in the namespace: router solicitations and DAD from
                # the peer would otherwise be sampled too.
                for conf in ("all", "default"):
                    Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")
            sh("ip", "link", "add", HOST_DEV, "type", "veth", "peer", "name", PEER_DEV, "netns", NETNS)
            sh("ip", "link", "set", HOST_DEV, "up")
            sh("ip", "-n", NETNS, "link", "set", PEER_DEV, "up")
            r["hvp0_ifindex"] = socket.if_nametoindex(HOST_DEV)
        with self.step("tc"):
            sh("tc", "qdisc", "add", "dev", HOST_DEV, "clsact")
            sh("tc", "filter", "add", "dev", HOST_DEV, "ingress", "prio", "1", "matchall",
               "action", "sample", "rate", str(RATE), "group", str(GROUP), "trunc", str(TRUNC))
            r["tc_filter"] = sh("tc", "-s", "filter", "show", "dev", HOST_DEV, "ingress")
        with self.step("genl_resolve_join"):
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            nl.bind((0, 0))
            family_id, groups = resolve_genl_family(nl, "psample")
            r["psample_family_id"] = family_id
            r["psample_groups"] = groups
            nl.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups["packets"])
        with self.step("send"):
            dst = mac_of(HOST_DEV)
            with in_netns(NETNS):
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only
                tx.bind((PEER_DEV, 0))
            # sysfs shows the namespace it was mounted in, not the current
            # one: the peer's address comes from the bound socket instead.
            src = tx.getsockname()[4]
            with tx:
                for index in range(FRAMES):
                    tx.send(build_frame(dst, src, index))
            r["frames_sent"] = FRAMES
            r["frame_len"] = FRAME_LEN
        with self.step("receive"):
            self.receive(nl, family_id)
        nl.close()
        with self.step("cleanup"):
            sh("ip", "link", "del", HOST_DEV)
            sh("ip", "netns", "del", NETNS)
        r["ok"] = all(v == "ok" for v in r["modules"].values()) and r["samples_matching"] == FRAMES
        return bool(r["ok"])

    def receive(self, nl: socket.socket, family_id: int) -> None:
        """Collect samples until all probe frames came back or the deadline passed."""
        r = self.report
        r["samples_total"] = 0
        r["samples_matching"] = 0
        r["groups_seen"] = []
        r["enobufs"] = 0
        seqs: list[int] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE
        while r["samples_matching"] < FRAMES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not select.select([nl], [], [], left)[0]:
                continue
            try:
                datagram = nl.recv(1 << 17)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # samples were dropped; the count will say so
                    r["enobufs"] += 1
                    continue
                raise
            for msg_type, _seq, body in iter_nlmsgs(datagram):
                attrs = decode_sample(body) if msg_type == family_id else None
                if attrs is None:
                    continue
                r["samples_total"] += 1
                group = _uint(attrs.get(SAMPLE_GROUP, b"\0\0\0\0"))
                if group not in r["groups_seen"]:
                    r["groups_seen"].append(group)
                if group != GROUP or not is_probe_frame(attrs.get(DATA, b"")):
                    continue
                r["samples_matching"] += 1
                seqs.append(_uint(attrs[GROUP_SEQ]))
                if "first_sample" not in r:
                    r["first_sample"] = describe_sample(attrs)
        r["group_seqs"] = seqs
        r["receive_wait"] = round(RECEIVE_DEADLINE - max(0.0, deadline - time.monotonic()), 3)


def describe_sample(attrs: dict[int, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "attr_types": sorted(attrs),
        "attr_names": [PSAMPLE_ATTR_NAMES.get(t, str(t)) for t in sorted(attrs)],
    }
    for attr, name in ((IIFINDEX, "IIFINDEX"), (SAMPLE_GROUP, "SAMPLE_GROUP"), (GROUP_SEQ, "GROUP_SEQ"),
                       (SAMPLE_RATE, "SAMPLE_RATE"), (ORIGSIZE, "ORIGSIZE")):
        out[name] = _uint(attrs[attr]) if attr in attrs else None
    out["DATA_len"] = len(attrs.get(DATA, b""))
    return out


def environment_facts() -> dict[str, Any]:
    """Cheap facts about the guest that later VM tests rely on."""
    facts: dict[str, Any] = {}
    for d in ("/run", "/var/run", "/tmp"):
        try:
            probe = Path(d) / f".hv-probe-{os.getpid()}"
            probe.write_text("x")
            probe.unlink()
            facts[f"writable:{d}"] = True
        except OSError as exc:
            facts[f"writable:{d}"] = f"no: {exc}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
             socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(10)
            tx.sendto(b"ping", rx.getsockname())
            facts["udp_loopback"] = rx.recv(16) == b"ping"
    except OSError as exc:
        facts["udp_loopback"] = f"no: {exc}"
    facts["nproc"] = os.cpu_count()
    facts["python"] = sys.executable
    return facts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} RWDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    probe = Probe()
    try:
        ok = probe.run()
    except Exception as exc:  # recorded in the report by Probe.step
        print(f"guest_probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        ok = False
    probe.report["uptime_at_end"] = uptime()
    text = json.dumps(probe.report, indent=2, sort_keys=True)
    tmp = out / (REPORT_FILE + ".tmp")
    tmp.write_text(text)
    tmp.rename(out / REPORT_FILE)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
