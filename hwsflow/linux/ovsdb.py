"""The OVSDB monitor: a connection to Open vSwitch's database socket, kept up, that reports the rows of
the tables hwsflow follows as they change.

hwsflow speaks RFC 7047's JSON-RPC itself (hwsflow.wire.ovsdb_jsonrpc and
ovsdb_monitor) instead of depending on the `ovs` package: it needs one request
(`monitor` on four tables, a few columns each) and one notification, asyncio
reads the socket on the agent's own loop, and the `ovs` IDL's poll loop would
need a thread of its own and a copy of the schema.  The agent gets events:
Snapshot (the monitor's reply, every row), Changed (an update), Unreachable (a
connection attempt failed), Lost (a connection ended), Refused (the server
answered with an error).  It tries again after each, sooner after a loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hwsflow.wire import ovsdb_jsonrpc as rpc
from hwsflow.wire import ovsdb_monitor as db

log = logging.getLogger("hwsflow")

MONITOR_ID = "hwsflow"
RETRY = (0.1, 0.25, 0.5, 1.0, 2.0)  # s before each reconnection attempt; the last one repeats
READ_SIZE = 1 << 16
CONNECT_TIMEOUT = 5.0  # s: a server that accepts but never answers the monitor request is dropped after this


@dataclass(frozen=True)
class Snapshot:
    rows: list[db.RowChange]


@dataclass(frozen=True)
class Changed:
    rows: list[db.RowChange]


@dataclass(frozen=True)
class Unreachable:
    reason: str


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class Refused:
    reason: str


Event = Snapshot | Changed | Unreachable | Lost | Refused


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


class OvsdbMonitor:
    """Follows tables (name -> columns) of the database at path, reporting to on_event on the loop."""

    def __init__(self, path: str, tables: Mapping[str, tuple[str, ...]], on_event: Callable[[Event], None]) -> None:
        self.path = path
        self.tables = tables
        self.on_event = on_event
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as err:
                self.on_event(Unreachable(_reason(err)))
            else:
                try:
                    if await self._follow(reader, writer):
                        attempt = 0  # it was connected: the next attempt comes soon
                except Exception as err:  # noqa: BLE001 - a bug must cost this connection, not the monitor for good
                    log.error("OVSDB %s: internal error while following it (%s: %s); reconnecting", self.path,
                              type(err).__name__, err)
                    self.on_event(Lost(f"internal error: {type(err).__name__}"))
                finally:
                    writer.close()
            await asyncio.sleep(RETRY[min(attempt, len(RETRY) - 1)])
            attempt += 1

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One connection: the monitor request, then its reply and updates until it ends.  Whether the
        monitor was set up (its reply arrived)."""
        request_id = 0
        writer.write(rpc.encode_request("monitor", db.monitor_params(MONITOR_ID, self.tables), request_id))
        stream = rpc.MessageStream()
        monitoring = False
        try:
            while True:
                timeout = None if monitoring else CONNECT_TIMEOUT
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                if not data:
                    raise ConnectionResetError("closed by the server")
                for message in stream.feed(data):
                    if isinstance(message, rpc.Reply) and message.id == request_id:
                        if message.error is not None:
                            self.on_event(Refused(str(message.error)))
                            return False
                        monitoring = True
                        self.on_event(Snapshot(db.row_changes(message.result)))
                    elif isinstance(message, rpc.Notification) and message.method == db.UPDATE:
                        rows = db.update_of(message.params, MONITOR_ID)
                        if rows is not None:
                            self.on_event(Changed(rows))
                    elif isinstance(message, rpc.Request) and message.method == "echo":
                        writer.write(rpc.encode_reply(message.id, message.params))  # the server's liveness probe
                    else:
                        log.debug("OVSDB %s: ignored %s", self.path, message)
        except TimeoutError:
            self._ended(monitoring, f"no answer to the monitor request within {CONNECT_TIMEOUT:.0f} s")
        except rpc.ProtocolError as err:
            self._ended(monitoring, f"not OVSDB's protocol: {err}")
        except OSError as err:
            self._ended(monitoring, _reason(err))
        return monitoring

    def _ended(self, monitoring: bool, reason: str) -> None:
        self.on_event(Lost(reason) if monitoring else Unreachable(reason))
