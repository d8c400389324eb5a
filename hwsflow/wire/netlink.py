"""Netlink and generic-netlink framing: headers, attributes, family look-up messages.

Pure code over bytes; the sockets live in psample_socket.py.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

Buffer = bytes | bytearray | memoryview | mmap.mmap  # what a read fills: RecvBuffer's area is an mmap

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
NLA_HDR = struct.Struct("=HH")
NLMSGERR = struct.Struct("=i")
HEADERS_LEN = NLMSG_HDR.size + GENL_HDR.size
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
# netlink attribute payloads are in host byte order
NLA_U16 = struct.Struct("=H")
NLA_U32 = struct.Struct("=I")
NLA_U64 = struct.Struct("=Q")


class MalformedMessage(ValueError):
    """A netlink message that cannot be trusted; the caller counts and skips it."""


class NetlinkErrorReply(Exception):
    """The kernel answered a request with NLMSG_ERROR; errno is positive."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass(frozen=True)
class Family:
    name: str
    id: int
    groups: dict[str, int]


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = NLA_HDR.pack(NLA_HDR.size + len(value), attr_type) + value
    return raw + b"\0" * (-len(raw) % 4)


def message_extent(buf: Buffer, offset: int, end: int) -> tuple[int, int, int]:
    """(nlmsg type, message start, message end) of the netlink message at offset; MalformedMessage if cut."""
    if end - offset < NLMSG_HDR.size:
        raise MalformedMessage(f"truncated netlink header ({end - offset} bytes)")
    length, msg_type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, offset)
    if length < NLMSG_HDR.size or offset + length > end:
        raise MalformedMessage(f"netlink length {length} does not fit the {end - offset} bytes received")
    return msg_type, offset, offset + length


def iter_messages(buf: bytes | bytearray | memoryview, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each netlink message in buf[:end]."""
    pos = 0
    while pos < end:
        msg_type, start, stop = message_extent(buf, pos, end)
        yield msg_type, start, stop
        pos = (stop + 3) & ~3


def attr_fields(wire: struct.Struct, buf: Buffer, start: int, end: int, what: str) -> tuple[Any, ...]:
    """wire's fields from the attribute value buf[start:end]; MalformedMessage when it is shorter than wire."""
    if end - start < wire.size:
        raise MalformedMessage(f"{what} is {end - start} bytes, needs {wire.size}")
    return wire.unpack_from(buf, start)


def iter_attrs(buf: Buffer, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of each attribute in buf[pos:end]; MalformedMessage on a bad length."""
    while end - pos >= NLA_HDR.size:
        length, attr_type = NLA_HDR.unpack_from(buf, pos)
        if length < NLA_HDR.size or pos + length > end:
            raise MalformedMessage(f"attribute {attr_type & NLA_TYPE_MASK} has length {length} at offset {pos}")
        yield attr_type & NLA_TYPE_MASK, pos + NLA_HDR.size, pos + length
        pos += (length + 3) & ~3
    if pos < end and any(buf[pos:end]):
        raise MalformedMessage(f"{end - pos} trailing bytes after the last attribute")


def build_getfamily(name: str, seq: int) -> bytes:
    """CTRL_CMD_GETFAMILY request for one family by name."""
    body = GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_family_reply(buf: bytes | bytearray | memoryview, name: str) -> Family | None:
    """The family in a GETFAMILY reply; None if buf holds only the trailing ACK; NetlinkErrorReply on error."""
    for msg_type, start, stop in iter_messages(buf, len(buf)):
        if msg_type == NLMSG_ERROR:
            (code,) = NLMSGERR.unpack_from(buf, start + NLMSG_HDR.size)
            if code:
                raise NetlinkErrorReply(-code)
            continue
        if msg_type != GENL_ID_CTRL:
            continue
        family_id, groups = 0, {}
        for attr_type, vstart, vend in iter_attrs(buf, start + HEADERS_LEN, stop):
            if attr_type == CTRL_ATTR_FAMILY_ID:
                family_id = NLA_U16.unpack_from(buf, vstart)[0]
            elif attr_type == CTRL_ATTR_MCAST_GROUPS:
                groups = _parse_groups(buf, vstart, vend)
        return Family(name, family_id, groups)
    return None


def _parse_groups(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[str, int]:
    groups: dict[str, int] = {}
    for _index, gstart, gend in iter_attrs(buf, start, end):
        group_name, group_id = "", None
        for attr_type, vstart, vend in iter_attrs(buf, gstart, gend):
            if attr_type == CTRL_ATTR_MCAST_GRP_NAME:
                group_name = bytes(buf[vstart:vend]).rstrip(b"\0").decode(errors="replace")
            elif attr_type == CTRL_ATTR_MCAST_GRP_ID:
                group_id = NLA_U32.unpack_from(buf, vstart)[0]
        if group_name and group_id is not None:
            groups[group_name] = group_id
    return groups


def parse_proc_netlink_drops(text: str, inode: int) -> int | None:
    """The Drops column of /proc/net/netlink for the socket with this inode, or None if absent."""
    lines = text.splitlines()
    if not lines:
        return None
    columns = lines[0].split()
    try:
        drops_col, inode_col = columns.index("Drops"), columns.index("Inode")
    except ValueError:
        return None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > max(drops_col, inode_col) and fields[inode_col] == str(inode):
            return int(fields[drops_col])
    return None
