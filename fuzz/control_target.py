"""Fuzz target: bytes a client sends on the control socket, and bytes a client reads back.

The contract checked (control.py and control_socket.py docstrings): parse_request
turns any bytes into a Request or a RequestError, never another exception; the
error is one printable line of at most ERROR_MAX characters; a Request is valid
(an interface name, numbers in range) and survives encode_request.  The server's
read of one connection (the same StreamReader limit, then EOF) answers exactly
one JSON reply, `ok` only for a request parse_request accepts.  parse_reply, the
CLI's side, gives a dict or a RequestError.

    python -m fuzz.run control --seconds 600
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from functools import lru_cache

from hwsflow.core.control import (
    MAX_REQUEST, Disable, Enable, Request, RequestError, Status, encode_request,
    ok_reply, parse_reply, parse_request,
)
from hwsflow.core.model import HEADER_MAX, HEADER_MIN, U32_MAX, is_ifname
from hwsflow.linux.control_socket import ControlServer

ERROR_MAX = 200  # parse_request cuts its messages here: a client prints them on one terminal line


def check_error_text(text: str) -> None:
    """An error a person reads: one line, printable, short, and writable to a UTF-8 terminal."""
    assert text and len(text) <= ERROR_MAX, f"error of {len(text)} characters: {text[:80]!r}"
    assert text.isprintable(), f"error with control characters: {text!r}"
    text.encode("utf-8")  # a lone surrogate here would crash the CLI's print


def check_request(request: Request) -> None:
    if isinstance(request, (Enable, Disable)):
        assert is_ifname(request.port), request
    if isinstance(request, Enable):
        assert 1 <= request.rate <= U32_MAX and request.direction in (None, "ingress", "egress", "both")
        assert request.header is None or HEADER_MIN <= request.header <= HEADER_MAX
    assert parse_request(encode_request(request)) == request


def check_parse(data: bytes) -> Request | None:
    """parse_request's verdict on data, checked; None for a RequestError."""
    try:
        request = parse_request(data)
    except RequestError as err:
        check_error_text(str(err))
        return None
    check_request(request)
    return request


def check_reply(data: bytes) -> None:
    try:
        reply = parse_reply(data)
    except RequestError as err:
        check_error_text(str(err))
        return
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)


@dataclass
class ServerHarness:
    """A ControlServer's per-connection read, driven without a listening socket.

    The peer-credentials check needs a real Unix socket: one end of a socketpair, whose peer
    is this (root) process.  One loop and one pair serve every input.
    """

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    pair: tuple[socket.socket, socket.socket] = field(default_factory=lambda: socket.socketpair(socket.AF_UNIX))
    handled: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = ControlServer("/nonexistent/hwsflow-fuzz.sock", self._handle)

    async def _handle(self, request: Request) -> bytes:
        self.handled.append(request)
        return ok_reply(request=type(request).__name__)

    async def _answer(self, data: bytes) -> bytes:
        reader = asyncio.StreamReader(limit=MAX_REQUEST + 1)  # as ControlServer.start sets it
        reader.feed_data(data)
        reader.feed_eof()
        return await self.server.answer(reader, _Writer(self.pair[0]))  # type: ignore[arg-type]  # a stand-in: see _Writer

    def answer(self, data: bytes) -> tuple[bytes, list[Request]]:
        self.handled.clear()
        reply = self.loop.run_until_complete(asyncio.wait_for(self._answer(data), 5.0))
        return reply, list(self.handled)


@dataclass(frozen=True)
class _Writer:
    """What ControlServer.answer asks of its StreamWriter: the connection's socket."""

    sock: socket.socket

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


@lru_cache(maxsize=1)
def harness() -> ServerHarness:
    return ServerHarness()


def check_server(data: bytes) -> None:
    """One connection that sends data and closes: one reply, ok exactly for a request the parser accepts."""
    reply, handled = harness().answer(data)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply
    answer = json.loads(reply)
    newline = data.find(b"\n")
    request = check_parse(data[:newline + 1]) if 0 <= newline <= MAX_REQUEST + 1 else None
    if request is None:
        assert answer["ok"] is False and not handled, (data[:100], answer)
        check_error_text(answer["error"])
    else:
        assert answer["ok"] is True and handled == [request], (data[:100], answer)


def one_input(data: bytes) -> None:
    check_parse(data)
    check_reply(data)
    check_server(data)


def seeds() -> list[bytes]:
    requests: list[Request] = [Status(), Enable("eno1", 10), Enable("enp4s0f0_1", 4294967295, "both", 1024), Disable("eth0")]
    lines = [encode_request(request) for request in requests]
    return [*lines, lines[1].rstrip(b"\n"), b'{"cmd": "enable", "port": "eth0", "rate": 0}\n',
            b'{"cmd": "status", "extra": [1, {"a": null}]}\n', b"[" * 64 + b"\n", b"x" * (MAX_REQUEST + 10),
            ok_reply(status={"ports": []})]
