"""The Prometheus endpoint: prometheus_client's HTTP server in a thread, one custom collector.

Each scrape asks the event loop for the agent's status (the snapshot `hwsflow
status` prints) and maps it with hwsflow.core.metrics, so both always agree and
no figure is counted twice.  The loop only builds the status dict, as it does
for the control socket; HTTP parsing and the text encoding run in the server's
threads (one per request, so a slow scraper holds up no one), never on the
sample path.  prometheus_client's WSGI app and server class are used, with
no hand-made HTTP parsing in a root daemon; only the request handler is
hwsflow's: a client that stops sending is dropped after REQUEST_TIMEOUT
instead of holding a thread for good, and a failed scrape is one log line,
not a traceback on stderr.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from hwsflow.core.metrics import families
from hwsflow.linux.collectors import format_target

log = logging.getLogger("hwsflow")

SNAPSHOT_TIMEOUT = 5.0  # s a scrape waits for the event loop; a loop stuck longer fails the scrape, as it should
REQUEST_TIMEOUT = 10.0  # s a client may take to send its request or read the answer


class MetricsError(Exception):
    """The endpoint cannot listen; str() names the config key."""


class StatusCollector(Collector):
    """Yields hwsflow's metric families for a status snapshot taken on the agent's event loop."""

    def __init__(self, status: Callable[[], dict[str, Any]], loop: asyncio.AbstractEventLoop) -> None:
        self.status = status
        self.loop = loop

    def snapshot(self) -> dict[str, Any]:
        if self.loop.is_closed():
            raise RuntimeError("the agent is stopping")
        done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(self.status())
            except BaseException as err:  # noqa: BLE001 - handed to the scraping thread, which fails its scrape
                done.set_exception(err)

        self.loop.call_soon_threadsafe(take)
        return done.result(SNAPSHOT_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


class MetricsRequestHandler(WSGIRequestHandler):
    """Drops a client that stops sending or reading; logs nothing per request."""

    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # `format` is the base class's name
        """Scrapes are not log events."""


def _guarded(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """The app, answering 503 with one log line when a scrape fails (the agent's loop did not answer)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except Exception as err:  # noqa: BLE001 - whatever failed, the scraper gets an answer, the log a line
            log.warning("metrics: a scrape failed: %s", f"{type(err).__name__}: {err}".rstrip(": "))
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"hwsflow: the agent's status is unavailable\n"]

    return guarded


class MetricsEndpoint:
    """Listens on host:port until close(); the registry holds hwsflow's families and the process's own
    (process_start_time_seconds, CPU, resident memory, open files)."""

    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, loop))
        ProcessCollector(registry=self.registry)
        self.address = format_target(host, port)
        server_class = type("Server", (ThreadingWSGIServer,),
                            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        try:
            self._server: WSGIServer = make_server(host, port, _guarded(make_wsgi_app(self.registry)), server_class,
                                       handler_class=MetricsRequestHandler)
        except OSError as err:
            raise MetricsError(f"metrics: cannot listen on {self.address}: {err.strerror or err}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="hwsflow-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and wait for the serving thread; a scrape in flight ends with its connection."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
