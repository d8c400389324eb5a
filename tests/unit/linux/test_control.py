"""The control protocol and socket: requests parsed strictly, root only, one agent at a time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hwsflow import cli
from hwsflow.core.control import (
    MAX_REQUEST, Disable, Enable, RequestError, Status, encode_request, error_reply, ok_reply, parse_reply,
    parse_request,
)
from hwsflow.linux.control_socket import AlreadyRunning, ControlServer, NotRunning, request


@pytest.mark.parametrize("req", [
    Status(), Enable("eno1", 10), Enable("enp4s0f0_1", 1, "both", 64), Disable("eno1"),
])
def test_requests_round_trip(req):
    assert parse_request(encode_request(req)) == req


@pytest.mark.parametrize("line, message", [
    (b"", "not a JSON object"),
    (b"\xff\xfe", "not a JSON object"),
    (b"[1]", "string `cmd`"),
    (b'{"cmd": 5}', "string `cmd`"),
    (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
    (b'{"cmd": "enable", "port": "eno1"}', "`rate` must be an integer from 1"),
    (b'{"cmd": "enable", "port": "eno1", "rate": 0}', "`rate` must be an integer from 1"),
    (b'{"cmd": "enable", "port": "eno1", "rate": true}', "`rate` must be an integer"),
    (b'{"cmd": "enable", "port": "eno1", "rate": 4294967296}', "`rate`"),
    (b'{"cmd": "enable", "port": "eno1", "rate": 10, "header": 13}', "`header` must be an integer from 14 to 1024"),
    (b'{"cmd": "enable", "port": "eno1", "rate": 10, "direction": "up"}', "`direction` must be one of"),
    (b'{"cmd": "enable", "port": "a/b", "rate": 10}', "`port` must be an interface name"),
    (b'{"cmd": "enable", "port": "sixteen_chars_xx", "rate": 10}', "`port` must be an interface name"),
    (b'{"cmd": "disable"}', "`port` must be an interface name"),
    (b'{"cmd": "status", "verbose": 1}', "unknown field(s) for `status`: verbose"),
    (b"[" * 100000, "request too long"),
])
def test_bad_requests_are_named(line, message):
    with pytest.raises(RequestError, match=None) as err:
        parse_request(line)
    assert message in str(err.value)


@given(st.binary(max_size=MAX_REQUEST + 10))
def test_any_bytes_give_a_request_or_a_request_error(data):
    try:
        parse_request(data)
    except RequestError:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_any_json_gives_a_request_or_a_request_error(value):
    for cmd in ("enable", "disable", "status"):
        obj = {"cmd": cmd, "port": value, "rate": value} if not isinstance(value, dict) else {**value, "cmd": cmd}
        try:
            parse_request(json.dumps(obj).encode())
        except RequestError:
            pass


def test_replies_parse():
    assert parse_reply(ok_reply(message="x")) == {"ok": True, "message": "x"}
    assert parse_reply(error_reply("no")) == {"ok": False, "error": "no"}
    with pytest.raises(RequestError):
        parse_reply(b'{"ok": tr')


# ---------------------------------------------------------------- the socket


async def _echo(req) -> bytes:
    return ok_reply(request=type(req).__name__)


def _serve(path: Path, body, handler=_echo):
    """Run body(server) in a thread while a ControlServer serves on path in this loop."""
    async def main():
        server = ControlServer(str(path), handler)
        await server.start()
        try:
            return server, await asyncio.get_running_loop().run_in_executor(None, body, server)
        finally:
            await server.close()
    return asyncio.run(main())


def test_root_gets_answers_and_the_files_are_root_only(tmp_path):
    path = tmp_path / "run" / "control.sock"
    _server, reply = _serve(path, lambda s: (request(str(path), Status()), oct(path.stat().st_mode & 0o777),
                                            oct(path.parent.stat().st_mode & 0o777)))
    answer, sock_mode, dir_mode = reply
    assert answer == {"ok": True, "request": "Status"}
    assert (sock_mode, dir_mode) == ("0o600", "0o700")
    assert not path.exists() and not Path(str(path) + ".lock").exists()  # nothing left behind


def test_a_handler_that_fails_still_answers_and_the_server_goes_on(tmp_path):
    path = tmp_path / "control.sock"

    async def broken(req) -> bytes:
        if isinstance(req, Status):
            raise KeyError("ifindex")
        return ok_reply()

    _server, replies = _serve(path, lambda s: [request(str(path), Status()), request(str(path), Disable("x"))],
                              broken)
    assert replies == [{"ok": False, "error": "internal error: KeyError: 'ifindex'"}, {"ok": True}]


def test_input_after_the_request_does_not_reset_the_reply(tmp_path):
    # the server reads one line; closing with the rest unread would reset the connection (ECONNRESET)
    path = tmp_path / "control.sock"

    def chatty(_server) -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(b'{"cmd": "status"}\n')
            sock.setblocking(False)
            try:
                while True:  # more than the server will ever read: it stays in the server's socket
                    sock.send(b"x" * 4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            sock.settimeout(30)
            sock.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: sock.recv(65536), b""))  # to the end, which must be EOF

    _server, reply = _serve(path, chatty)
    assert json.loads(reply) == {"ok": True, "request": "Status"}


def _as_user(uid: int, path: Path, data: bytes) -> bytes:
    """Connect, send and read as another user, in a forked child (no exec: it needs no readable binary)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(30)
                sock.connect(str(path))
                try:
                    sock.sendall(data)
                except BrokenPipeError:
                    pass  # refused before it sent (the server need not read a non-root request): the reply waits
                os.write(write_end, sock.recv(4096))
        except BaseException as err:  # noqa: BLE001 - reported to the parent through the pipe
            os.write(write_end, repr(err).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return out


def test_a_non_root_peer_is_refused_even_through_an_open_socket_file(tmp_path):
    public = Path(tempfile.mkdtemp(prefix="hwsflow-ctl-"))
    try:
        os.chmod(public, 0o755)
        path = public / "control.sock"

        def as_nobody(server):
            os.chmod(path, 0o666)  # a mistake that would open the file: the credentials check still holds
            return _as_user(65534, path, b'{"cmd": "status"}\n')
        server, out = _serve(path, as_nobody)
    finally:
        shutil.rmtree(public)
    assert json.loads(out) == {"ok": False, "error": "permission denied: only root may control hwsflow"}
    assert server.refused == 1


def test_oversized_half_sent_and_garbage_requests_get_errors(tmp_path):
    path = tmp_path / "control.sock"

    def raw(data: bytes, shut: bool = True) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            return parse_reply(sock.recv(65536))

    def body(server):
        return [raw(b"x" * (MAX_REQUEST + 100)), raw(b'{"cmd": "status"}'), raw(b"nonsense\n"),
                request(str(path), Disable("eno1"))]
    server, (too_long, half, garbage, fine) = _serve(path, body)
    assert "too long" in too_long["error"]
    assert "incomplete request" in half["error"]
    assert "not a JSON object" in garbage["error"]
    assert fine == {"ok": True, "request": "Disable"}
    assert server.bad_requests == 3


def test_a_second_agent_is_refused_and_leaves_the_first_ones_files(tmp_path):
    path = tmp_path / "control.sock"

    def second(server):
        other = ControlServer(str(path), _echo)
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            other.acquire()
        asyncio.run(other.close())
        return request(str(path), Status())
    _, answer = _serve(path, second)
    assert answer["ok"]


def test_no_agent_is_one_line_naming_the_unit(tmp_path, capsys):
    with pytest.raises(NotRunning, match=r"systemctl start hwsflow\.service"):
        request(str(tmp_path / "none.sock"), Status())
    assert cli.main(["status", "--socket", str(tmp_path / "none.sock")]) == cli.EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hwsflow is not running" in err
