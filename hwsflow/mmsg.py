"""Many netlink messages per system call: recvmmsg(2) and sendmmsg(2) through ctypes, reused buffers.

Python's socket module has no recvmmsg.  Each psample sample is its own
netlink message, so one recv per sample costs a system call and a Python call
each; recvmmsg fills up to `slots` messages per call.  Message i lands at
i * stride in `area`, one preallocated bytearray; receive() hands back the lengths.  The iovecs and
mmsghdrs are built once and reused: the kernel rewrites only msg_len (and
msg_flags / msg_namelen, which we do not read).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

MSG_DONTWAIT = 0x40
SLOTS = 128  # messages per recvmmsg call
# a psample message is at most 64 KiB of DATA plus its other attributes: a slot this size never
# truncates one (a truncated message would fail the length checks and be counted malformed)
SLOT_SIZE = 68 << 10


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class RecvBuffer:
    """Slots for `slots` messages of up to `slot_size` bytes, read with one recvmmsg call."""

    def __init__(self, slots: int = SLOTS, slot_size: int = SLOT_SIZE) -> None:
        if slots < 1 or slot_size < 4096:
            raise ValueError(f"RecvBuffer needs at least one slot of 4096 bytes, not {slots} of {slot_size}")
        self.slots = slots
        self.stride = slot_size
        # a bytearray, not an mmap: the pipeline's unpack and slicing run ~7% faster on it, for
        # slots * slot_size bytes of resident memory (8.9 MB by default)
        self.area = bytearray(slots * slot_size)
        # the kernel writes through raw addresses: this export pins the bytearray (no resize can move it)
        self._pin = (ctypes.c_char * len(self.area)).from_buffer(self.area)
        base = ctypes.addressof(self._pin)
        self._iov = (_IoVec * slots)(*((base + i * slot_size, slot_size) for i in range(slots)))
        self._hdrs = (_MMsgHdr * slots)()
        for i in range(slots):
            self._hdrs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._hdrs[i].msg_hdr.msg_iovlen = 1
        # every msg_len of the array in one unpack, straight from the ctypes memory
        after = ctypes.sizeof(_MMsgHdr) - _MMsgHdr.msg_len.offset - 4
        self._lengths = struct.Struct("=" + f"{_MMsgHdr.msg_len.offset}xI{after}x" * slots)
        self._hdr_view = memoryview(self._hdrs).cast("B")
        libc = ctypes.CDLL(None, use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        self._recvmmsg.restype = ctypes.c_int
        self._hdr_addr = ctypes.addressof(self._hdrs)

    def receive(self, fd: int) -> tuple[int, ...]:
        """Lengths of the messages now in the slots, oldest first; () when none is waiting.

        Never blocks.  A socket error (ENOBUFS after an overrun) raises OSError, as recv would.
        """
        count = self._recvmmsg(fd, self._hdr_addr, self.slots, MSG_DONTWAIT, None)
        if count > 0:
            return self._lengths.unpack_from(self._hdr_view)[:count]
        if count == 0:
            return ()
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return ()
        raise OSError(code, os.strerror(code))

    def close(self) -> None:
        """Release the pinned area (receive() must not be called afterwards)."""
        del self._iov, self._hdrs, self._hdr_view, self._pin


_SOCKADDR_NL = struct.Struct("=HHII")  # nl_family, pad, nl_pid, nl_groups


class SendBuffer:
    """`slots` messages kept in one area (slot i at i * stride, its length set once), sent to one
    netlink port id with one sendmmsg call: the benchmark's replay, at a fraction of a sendto loop's CPU.

    The caller rewrites what changes in place (area is a plain bytearray) before each send().
    """

    def __init__(self, messages: list[bytes], port_id: int) -> None:
        if not messages:
            raise ValueError("SendBuffer needs at least one message")
        self.slots = len(messages)
        self.stride = stride = (max(len(m) for m in messages) + 3) & ~3
        self.area = bytearray(self.slots * stride)
        for i, msg in enumerate(messages):
            self.area[i * stride:i * stride + len(msg)] = msg
        self._pin = (ctypes.c_char * len(self.area)).from_buffer(self.area)
        base = ctypes.addressof(self._pin)
        self._name = ctypes.create_string_buffer(_SOCKADDR_NL.pack(16, 0, port_id, 0), _SOCKADDR_NL.size)
        self._iov = (_IoVec * self.slots)(*((base + i * stride, len(m)) for i, m in enumerate(messages)))
        self._hdrs = (_MMsgHdr * self.slots)()
        for i in range(self.slots):
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self._name)
            hdr.msg_namelen = _SOCKADDR_NL.size
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
        libc = ctypes.CDLL(None, use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self._sendmmsg.restype = ctypes.c_int
        self._hdr_addr = ctypes.addressof(self._hdrs)
        self._hdr_size = ctypes.sizeof(_MMsgHdr)

    def send(self, fd: int, first: int, count: int, flags: int = 0) -> int:
        """Send slots first .. first + count - 1, in order; how many the kernel took (0 when the first
        would block under MSG_DONTWAIT).  Other errors raise OSError."""
        sent = self._sendmmsg(fd, self._hdr_addr + first * self._hdr_size, count, flags)
        if sent >= 0:
            return sent
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(code, os.strerror(code))

    def close(self) -> None:
        del self._iov, self._hdrs, self._pin
