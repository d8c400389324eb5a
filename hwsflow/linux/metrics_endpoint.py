"""The Prometheus endpoint: prometheus_client's HTTP server in a thread, one custom collector.

Each scrape asks the event loop for the agent's status (the snapshot `hwsflow
status` prints) and maps it with hwsflow.core.metrics, so both always agree and
no figure is counted twice.  The loop only builds the status dict, as it does
for the control socket; HTTP parsing and the text encoding run in the server's
threads (one per request, so a slow scraper holds up no one), never on the
sample path.  prometheus_client's own server is used rather than one written
here: no hand-made HTTP parsing in a root daemon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from hwsflow.core.metrics import families

SNAPSHOT_TIMEOUT = 5.0  # s a scrape waits for the event loop; a loop stuck longer fails the scrape, as it should


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
            except BaseException as err:  # handed to the scraping thread, which fails its scrape
                done.set_exception(err)

        self.loop.call_soon_threadsafe(take)
        return done.result(SNAPSHOT_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


class MetricsEndpoint:
    """Listens on host:port until close(); the registry holds hwsflow's families and the process's own
    (process_start_time_seconds, CPU, resident memory, open files)."""

    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, loop))
        ProcessCollector(registry=self.registry)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as err:
            raise MetricsError(f"metrics: cannot listen on {self.address}: {err.strerror or err}") from None

    def close(self) -> None:
        """Stop listening and wait for the serving thread; a scrape in flight ends with its connection."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
