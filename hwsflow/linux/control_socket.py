"""The agent's Unix control socket (server) and the CLI's side of it (client).

Only root may use it: the socket file is 0600 in a 0700 directory, and every
connection's peer credentials (SO_PEERCRED) are checked as well, so a socket
file made reachable by mistake still admits no one else.  A lock file next to
the socket makes a second agent refuse to start instead of fighting the first
over the same filters.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from hwsflow.core.control import (
    MAX_REPLY, MAX_REQUEST, Request, RequestError, encode_request, error_reply, parse_reply, parse_request,
)

log = logging.getLogger("hwsflow")

UNIT = "hwsflow.service"
REQUEST_TIMEOUT = 5.0  # s a client has to send its request: a half-sent one must not hold a task forever
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handler = Callable[[Request], Awaitable[bytes]]


class AlreadyRunning(Exception):
    """Another agent holds the control socket's lock."""


class NotRunning(Exception):
    """No agent answers on the control socket."""


def peer_uid(sock: socket.socket) -> int:
    uid: int
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


class ControlServer:
    """Accepts one request per connection and answers it with what handler returns."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.refused = 0  # connections from non-root peers
        self.bad_requests = 0
        self._lock_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def lock_path(self) -> str:
        return self.path + ".lock"

    def acquire(self) -> None:
        """Create the directory, take the lock: AlreadyRunning if another agent has it."""
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another hwsflow (pid {holder}) is running: it holds {self.lock_path}; "
                                 "two agents would fight over the same filters") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full /run: the pid is only a courtesy to whoever finds the lock taken
            pass
        self._lock_fd = fd

    async def start(self) -> None:
        """Lock, then listen; a socket file left by a crashed agent is replaced."""
        if self._lock_fd is None:
            self.acquire()
        try:
            os.unlink(self.path)  # we hold the lock: whatever is there is stale
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the file is 0600 from its creation, never briefly wider
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST + 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self.answer(reader, writer)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
            # closing with the client's input unread resets the connection (ECONNRESET), which can reach
            # the client before the end of the reply: say we are done, and let it finish first
            writer.write_eof()
            await asyncio.wait_for(_discard_until_eof(reader), REQUEST_TIMEOUT)
        except (TimeoutError, OSError):
            pass  # the client went away: nothing to tell it
        finally:
            writer.close()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The reply to one connection: its peer checked, its request read and handled (the fuzz target's entry)."""
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid != 0:
            self.refused += 1
            log.warning("control socket: refused a request from uid %d: only root may control hwsflow", uid)
            return error_reply("permission denied: only root may control hwsflow")
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            return self._bad(f"request too long (at most {MAX_REQUEST} bytes)")
        except asyncio.IncompleteReadError:
            return self._bad("incomplete request: no newline before the end")
        except TimeoutError:
            return self._bad(f"no complete request within {REQUEST_TIMEOUT:.0f} s")
        try:
            request = parse_request(line)
        except RequestError as err:
            return self._bad(str(err))
        try:
            return await self.handler(request)
        except Exception as err:  # the client gets an answer, the agent goes on
            log.exception("control socket: the %s request failed", type(request).__name__)
            return error_reply(f"internal error: {type(err).__name__}: {err}")

    def _bad(self, message: str) -> bytes:
        self.bad_requests += 1
        return error_reply(message)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._lock_fd is None:
            return  # the files are another agent's
        for path in (self.path, self.lock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def request(path: str, req: Request, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the agent and return its reply (NotRunning, RequestError or OSError)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"hwsflow is not running: nothing answers on {path} "
                             f"(start it with `systemctl start {UNIT}`)") from None
        except PermissionError:
            raise RequestError(f"{path}: permission denied: only root may control hwsflow") from None
        try:
            sock.sendall(encode_request(req))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered without reading (it refuses non-root peers): its reply is queued
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_REPLY:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return parse_reply(b"".join(chunks))
