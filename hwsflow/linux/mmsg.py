"""Many messages per system call: recvmmsg(2) and sendmmsg(2) through ctypes, reused buffers.

RecvBuffer reads psample, SendBuffer replays psample messages in the benchmark, and
DatagramSender sends the collectors' datagrams on the Python path (with the compiled loop they go out
through its Outbox, hwsflow/core/_fastpath.c, without ctypes).

Python's socket module has no recvmmsg.  Each psample sample is its own
netlink message, so one recv per sample costs a system call and a Python call
each; recvmmsg fills up to `slots` messages per call.  Message i lands at
i * stride in `area`, one preallocated mapping; receive() hands back the lengths.  The iovecs and
mmsghdrs are built once and reused: the kernel rewrites only msg_len (and
msg_flags / msg_namelen, which we do not read).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from itertools import accumulate, chain
from collections.abc import Callable, Sequence
from typing import Any

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


def _headers(base: int, slots: int, stride: int, lengths: list[int], name: int | None = None,
             namelen: int = 0) -> tuple[ctypes.Array[_IoVec], ctypes.Array[_MMsgHdr]]:
    """The iovec and mmsghdr arrays for `slots` messages at base + i * stride, lengths[i] bytes each."""
    iov = (_IoVec * slots)(*(_IoVec(base + i * stride, lengths[i]) for i in range(slots)))
    hdrs = (_MMsgHdr * slots)()
    for i in range(slots):
        hdr = hdrs[i].msg_hdr
        hdr.msg_iov = ctypes.pointer(iov[i])
        hdr.msg_iovlen = 1
        if name is not None:
            hdr.msg_name, hdr.msg_namelen = name, namelen
    return iov, hdrs


def _libc_call(name: str, argtypes: Sequence[Any]) -> Callable[..., int]:
    function = ctypes.CDLL(None, use_errno=True)[name]
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_SENDMMSG_ARGS = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


def _call_error() -> OSError:
    """The error of the libc call that just returned -1."""
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def _count_or_raise(count: int) -> int:
    """What recvmmsg / sendmmsg returned: the count, 0 for EAGAIN / EINTR under MSG_DONTWAIT, else OSError."""
    if count >= 0:
        return count
    err = _call_error()
    if err.errno in (errno.EAGAIN, errno.EINTR):
        return 0
    raise err


class RecvBuffer:
    """Slots for `slots` messages of up to `slot_size` bytes, read with one recvmmsg call."""

    def __init__(self, slots: int = SLOTS, slot_size: int = SLOT_SIZE) -> None:
        if slots < 1 or slot_size < 4096:
            raise ValueError(f"RecvBuffer needs at least one slot of 4096 bytes, not {slots} of {slot_size}")
        self.slots = slots
        self.stride = slot_size
        # an anonymous mmap, not a bytearray: only the pages messages reach become resident (a bytearray
        # is zeroed whole: 8.9 MB), and its slices are bytes, one allocation instead of two
        self.area = mmap.mmap(-1, slots * slot_size)
        for slot in range(slots):  # every slot's first page resident now: RSS flat from the start
            self.area[slot * slot_size] = 0
        # the kernel writes through raw addresses: this export pins the area (it cannot be closed under it)
        self._pin = (ctypes.c_char * len(self.area)).from_buffer(self.area)
        self._iov, self._hdrs = _headers(ctypes.addressof(self._pin), slots, slot_size, [slot_size] * slots)
        # every msg_len of the array in one unpack, straight from the ctypes memory
        after = ctypes.sizeof(_MMsgHdr) - _MMsgHdr.msg_len.offset - 4
        self._lengths = struct.Struct("=" + f"{_MMsgHdr.msg_len.offset}xI{after}x" * slots)
        self._hdr_view = memoryview(self._hdrs).cast("B")
        self._recvmmsg = _libc_call("recvmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                                 ctypes.c_void_p])
        self._hdr_addr = ctypes.addressof(self._hdrs)

    def receive(self, fd: int) -> tuple[int, ...]:
        """Lengths of the messages now in the slots, oldest first; () when none is waiting.

        Never blocks.  A socket error (ENOBUFS after an overrun) raises OSError, as recv would.
        """
        count = _count_or_raise(self._recvmmsg(fd, self._hdr_addr, self.slots, MSG_DONTWAIT, None))
        return self._lengths.unpack_from(self._hdr_view)[:count] if count else ()

    def close(self) -> None:
        """Release the pinned area (receive() must not be called afterwards)."""
        self._hdr_view.release()
        del self._iov, self._hdrs, self._hdr_view, self._pin
        try:
            self.area.close()
        except BufferError:  # a view of it is still alive (a kept traceback's frame): the GC unmaps it later
            pass


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
        self._name = ctypes.create_string_buffer(_SOCKADDR_NL.pack(16, 0, port_id, 0), _SOCKADDR_NL.size)
        self._iov, self._hdrs = _headers(ctypes.addressof(self._pin), self.slots, stride, [len(m) for m in messages],
                                         ctypes.addressof(self._name), _SOCKADDR_NL.size)
        self._sendmmsg = _libc_call("sendmmsg", _SENDMMSG_ARGS)
        self._hdr_addr = ctypes.addressof(self._hdrs)
        self._hdr_size = ctypes.sizeof(_MMsgHdr)

    def send(self, fd: int, first: int, count: int, flags: int = 0) -> int:
        """Send slots first .. first + count - 1, in order; how many the kernel took (0 when the first
        would block under MSG_DONTWAIT).  Other errors raise OSError."""
        return _count_or_raise(self._sendmmsg(fd, self._hdr_addr + first * self._hdr_size, count, flags))

    def close(self) -> None:
        del self._iov, self._hdrs, self._pin


class DatagramSender:
    """Datagrams copied back to back into one area, then sent to connected sockets with one sendmmsg
    each: for the collectors, where a send per datagram cost ~0.7 us more than this (per datagram of 1400
    bytes on loopback).  The area grows to what a load needs."""

    def __init__(self, slots: int = 64, area_size: int = 64 * 1500) -> None:
        self.slots = slots
        self.loaded = 0
        self._sendmmsg = _libc_call("sendmmsg", _SENDMMSG_ARGS)
        self._hdr_size = ctypes.sizeof(_MMsgHdr)
        # every iovec (base, length) of a load written by one pack: no Python step per datagram
        self._iov_packs = [struct.Struct("@" + "PN" * n).pack_into for n in range(slots + 1)]
        self._iov: ctypes.Array[_IoVec] | None = None
        self._resize(area_size)

    def _resize(self, area_size: int) -> None:
        self.close()
        self.area = bytearray(area_size)
        self._pin = (ctypes.c_char * area_size).from_buffer(self.area)
        self._base = ctypes.addressof(self._pin)
        self._iov, self._hdrs = _headers(self._base, self.slots, 0, [0] * self.slots)
        self._iov_view = memoryview(self._iov).cast("B")
        self._hdr_addr = ctypes.addressof(self._hdrs)

    def load(self, datagrams: list[bytes]) -> None:
        """Copy up to `slots` datagrams in; loaded says how many."""
        datagrams = datagrams[:self.slots]
        joined = b"".join(datagrams)
        if len(joined) > len(self.area):
            self._resize(len(joined))
        self.area[:len(joined)] = joined
        lengths = list(map(len, datagrams))
        self._iov_packs[len(lengths)](self._iov_view, 0,
                                      *chain.from_iterable(zip(accumulate(lengths, initial=self._base), lengths)))
        self.loaded = len(lengths)

    def send(self, fd: int, first: int) -> int:
        """Send loaded datagrams first .. loaded - 1 in order on a connected socket, never blocking; how
        many the kernel took.  An error on the first one raises OSError (EAGAIN included: a full socket
        buffer loses the datagram, as a failed send would).  A short count means datagram first + count
        failed and sendmmsg dropped its error code: the caller counts it."""
        sent = self._sendmmsg(fd, self._hdr_addr + first * self._hdr_size, self.loaded - first, MSG_DONTWAIT)
        if sent < 0:
            raise _call_error()
        return sent

    def close(self) -> None:
        """Release the pinned area (send() must not be called afterwards); closing again does nothing."""
        if self._iov is not None:
            self._iov_view.release()
            del self._hdrs, self._pin
            self._iov = None
            self.loaded = 0
