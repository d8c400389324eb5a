"""Fuzzing the control socket: structured bad requests, and oversized, half-sent or dripped connections.

test_control.py fuzzes parse_request with random bytes and JSON values and
covers one oversized, one half-sent-then-closed and one garbage request.  Here
requests are damaged one field at a time (the error must name it), strings
carry what JSON can smuggle (lone surrogates, control characters), and real
connections stall, drip or flood: every one gets one reply within the server's
REQUEST_TIMEOUT, and stalled clients never delay the others.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.control_target import check_error_text, check_parse, one_input, seeds
from fuzz.limits import deadline
from hwsflow.linux import control_socket
from hwsflow.core.control import MAX_REQUEST, RequestError, ok_reply, parse_reply, parse_request
from hwsflow.linux.control_socket import ControlServer

TIMEOUT = 0.5  # REQUEST_TIMEOUT for these tests: stalls are what they are about
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

smuggled = st.one_of(
    st.text(max_size=20), st.text(min_size=16, max_size=300),
    st.sampled_from(["\ud800", "eth\udfff", "a\x00b", "e\u2028", "\x7f", "eth0\n", "é" * 8, "eth 0", "a/b", ".", ".."]),
)
values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False), smuggled, st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
VALID_ENABLE = {"cmd": "enable", "port": "eno1", "rate": 10, "direction": "both", "header": 128}
WRONG = {
    "port": st.one_of(smuggled.filter(lambda text: not _ifname_like(text)), st.integers(), st.none(),
                      st.lists(st.text(max_size=3), max_size=2)),
    "rate": st.one_of(st.integers(max_value=0), st.integers(min_value=2**32), st.booleans(), st.floats(),
                      st.text(max_size=5), st.lists(st.integers(), max_size=2)),
    "header": st.one_of(st.integers(max_value=13), st.integers(min_value=1025), st.booleans(), st.floats(),
                        st.text(max_size=5)),
    "direction": st.one_of(smuggled.filter(lambda text: text not in ("ingress", "egress", "both")), st.integers(),
                           st.booleans(), st.lists(st.integers(), max_size=2)),
}


def _ifname_like(text: str) -> bool:
    return 0 < len(text.encode(errors="surrogatepass")) < 16 and text.isprintable() and not any(
        c in "/:" or c.isspace() for c in text) and text not in (".", "..")


def encode(obj: object) -> bytes:
    """JSON as a hostile client may write it: surrogates escaped (json.dumps does), any key order."""
    return json.dumps(obj).encode() + b"\n"


@SETTINGS
@given(st.sampled_from(sorted(WRONG)).flatmap(lambda field: st.tuples(st.just(field), WRONG[field])))
def test_one_wrong_field_is_named(case):
    field, value = case
    with pytest.raises(RequestError) as info:
        parse_request(encode({**VALID_ENABLE, field: value}))
    check_error_text(str(info.value))
    assert f"`{field}`" in str(info.value)


@SETTINGS
@given(st.sampled_from(["enable", "disable", "status"]),
       st.dictionaries(st.one_of(smuggled, st.sampled_from(["port", "rate", "direction", "header"])), values,
                       max_size=5))
def test_any_fields_give_a_request_or_a_clean_error(cmd, fields):
    check_parse(encode({**fields, "cmd": cmd}))


@pytest.mark.parametrize("line, message", [
    (rb'{"cmd": "disable", "port": "\ud800"}', "`port` must be an interface name"),
    (rb'{"cmd": "enable", "port": "eth\udfff", "rate": 1}', "`port` must be an interface name"),
    (b'{"cmd": "status", "directi\\u007fn": 1}', r"unknown field(s) for `status`: 'directi\x7fn'"),
    (b'{"cmd": "status", "\\ud800": 1}', r"unknown field(s) for `status`: '\ud800'"),
    (b'{"cmd": "' + b"\x7f" * 80 + b'"}', r"unknown command '\x7f\x7f"),
])
def test_smuggled_characters_are_refused_in_a_clean_line(line, message):
    """Found by fuzzing: a lone surrogate in `port` escaped as UnicodeEncodeError; a control character in
    an unknown field's name reached the client's terminal; an unknown command of 40 control characters
    made a 210-character error once escaped."""
    with pytest.raises(RequestError) as info:
        parse_request(line)
    assert str(info.value).startswith(message)
    check_error_text(str(info.value))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.sampled_from(seeds()),
                 st.tuples(st.sampled_from(seeds()), st.binary(max_size=6), st.integers(0, 200)).map(
                     lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])))
def test_raw_bytes_through_the_atheris_check(data):
    """parse_request, parse_reply and the server's read of one connection (fuzz/control_target.py)."""
    with deadline(10, "one control input"):
        one_input(data)


# ---------------------------------------------------------------- real connections


async def _answer(request) -> bytes:
    return ok_reply(request=type(request).__name__)


@contextmanager
def serving(path: Path) -> Iterator[ControlServer]:
    """A ControlServer on its own event loop thread, as the agent runs it."""
    loop = asyncio.new_event_loop()
    server = ControlServer(str(path), _answer)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(TIMEOUT + 10)  # a reply that never comes fails the test instead of hanging it
    sock.connect(str(path))
    return sock


def read_reply(sock: socket.socket) -> dict:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return parse_reply(b"".join(chunks))


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(control_socket, "REQUEST_TIMEOUT", TIMEOUT)


def test_a_half_sent_request_left_open_times_out(tmp_path, short_timeout):
    with serving(tmp_path / "c.sock") as server, connect(tmp_path / "c.sock") as sock:
        started = time.monotonic()
        sock.sendall(b'{"cmd": "sta')  # and nothing more, the connection left open
        reply = read_reply(sock)
        waited = time.monotonic() - started
    assert reply["ok"] is False and "no complete request within" in reply["error"]
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 5
    assert server.bad_requests == 1


def test_a_dripped_request_is_bounded_as_a_whole(tmp_path, short_timeout):
    """One byte at a time never resets the clock: the bound is on the whole request."""
    with serving(tmp_path / "c.sock"), connect(tmp_path / "c.sock") as sock:
        started = time.monotonic()
        sock.setblocking(False)
        reply = b""
        while not reply.endswith(b"\n") and time.monotonic() - started < TIMEOUT + 5:
            try:
                sock.send(b" ")
            except OSError:
                pass  # the server has answered and closed
            time.sleep(TIMEOUT / 20)
            try:
                reply += sock.recv(65536)
            except BlockingIOError:
                pass
        waited = time.monotonic() - started
    assert "no complete request within" in parse_reply(reply)["error"]
    assert waited < TIMEOUT + 5


def test_stalled_clients_do_not_delay_a_request(tmp_path, short_timeout):
    path = tmp_path / "c.sock"
    with serving(path):
        stalled = [connect(path) for _ in range(30)]
        for sock in stalled:
            sock.sendall(b'{"cmd": ')
        started = time.monotonic()
        with connect(path) as sock:
            sock.sendall(b'{"cmd": "status"}\n')
            reply = read_reply(sock)
        answered_in = time.monotonic() - started
        for sock in stalled:
            assert "no complete request" in read_reply(sock)["error"]
            sock.close()
    assert reply == {"ok": True, "request": "Status"}
    assert answered_in < TIMEOUT  # served while the stalled ones still waited


def test_an_oversized_request_left_open_is_refused_without_waiting(tmp_path, short_timeout):
    with serving(tmp_path / "c.sock"), connect(tmp_path / "c.sock") as sock:
        started = time.monotonic()
        for _ in range(4):
            try:
                sock.sendall(b"[" * (MAX_REQUEST // 2))
            except (BrokenPipeError, ConnectionResetError):
                break  # refused and closed as soon as the limit was passed
        reply = read_reply(sock)
        waited = time.monotonic() - started
    assert "too long" in reply["error"]
    assert waited < TIMEOUT


def test_any_chunks_get_one_reply_in_bounded_time(tmp_path, monkeypatch):
    """Whatever a client sends, in pieces, with or without closing its side: one reply, in time."""
    stall = 0.2  # most examples close their side; the ones that stall wait this long
    monkeypatch.setattr(control_socket, "REQUEST_TIMEOUT", stall)
    path = tmp_path / "c.sock"

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(seeds())), min_size=1, max_size=5),
           st.sampled_from([True, True, True, False]))
    def one_connection(chunks, close_write):
        data = b"".join(chunks)
        newline = data.find(b"\n")
        expected = check_parse(data[:newline + 1]) if 0 <= newline <= MAX_REQUEST + 1 else None
        with connect(path) as sock:
            started = time.monotonic()
            for chunk in chunks:
                try:
                    sock.sendall(chunk)
                except BrokenPipeError:
                    break  # answered and closed already
            if close_write:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # closed by the server already
            reply = read_reply(sock)
            assert time.monotonic() - started < stall + 5
        assert reply["ok"] is (expected is not None)
        if expected is not None:
            assert reply["request"] == type(expected).__name__
        else:
            check_error_text(reply["error"])

    with serving(path):
        one_connection()
