"""Records what a real ovsdb-server sends hwsflow's monitor, byte for byte, for the unit tests' fixtures.

    .venv/bin/python -m tests.helpers.ovsdb_record tests/unit/wire

writes ovsdb_session.jsonrpc (the monitor's reply and the updates of the
ovs-vsctl commands below, as read from the socket) and ovsdb_errors.jsonrpc
(the server's answers to a bad monitor request and to an echo), and prints the
server's version.  The commands, in order, are in SESSION; the tests read the
fixtures with that order in mind.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hwsflow.core.ovs_bridges import COLUMNS
from hwsflow.wire import ovsdb_jsonrpc as rpc
from hwsflow.wire import ovsdb_monitor as db
from .ovsdb_server import OvsdbServer  # relative: mypy checks tests/helpers as a package of its own

BEFORE: tuple[tuple[str, ...], ...] = (  # in the database when the monitor starts: its reply
    ("add-br", "br0"),
    ("add-port", "br0", "vm1tap", "--", "set", "interface", "vm1tap", "external_ids:iface-id=8c1f0d4e-port",
     "external_ids:attached-mac=52:54:00:12:34:56", "external_ids:vm-uuid=5a3e0b7c-vm"),
    ("add-port", "br0", "int1", "--", "set", "interface", "int1", "type=internal"),
)
SESSION: tuple[tuple[str, ...], ...] = (  # one update each
    ("add-br", "br1"),
    ("add-port", "br0", "patch-a", "--", "set", "interface", "patch-a", "type=patch", "options:peer=patch-b",
     "--", "add-port", "br1", "patch-b", "--", "set", "interface", "patch-b", "type=patch", "options:peer=patch-a"),
    ("add-port", "br0", "vx1", "--", "set", "interface", "vx1", "type=vxlan", "options:remote_ip=192.0.2.1"),
    ("add-port", "br1", "gnv1", "--", "set", "interface", "gnv1", "type=geneve", "options:remote_ip=192.0.2.2",
     "options:dst_port=6082"),
    ("--", "--id=@s", "create", "sflow", "agent=lo", 'targets="192.0.2.9:6343"', "sampling=64", "--", "set",
     "bridge", "br0", "sflow=@s"),
    ("set", "interface", "vm1tap", "external_ids:iface-status=active"),
    ("del-port", "br0", "int1"),
    ("clear", "bridge", "br0", "sflow"),
    ("del-br", "br1"),
)
BAD_REQUESTS = (
    rpc.encode_request("monitor", db.monitor_params("hwsflow", {"Bridge": ("name", "no_such_column")}), 1),
    rpc.encode_request("monitor", db.monitor_params("hwsflow", {"Bridge": ("name",)}, database="Nodb"), 2),
    rpc.encode_request("echo", ["probe"], "echo-1"),
)


def _read_all(sock: socket.socket, quiet: float, out: list[bytes]) -> None:
    """Everything the server sends until it has been quiet for this long."""
    sock.settimeout(quiet)
    while True:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return
        if not data:
            return
        out.append(data)


def record(directory: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        server = OvsdbServer(Path(scratch)).start()
        try:
            for command in BEFORE:
                server.vsctl(*command)
            chunks: list[bytes] = []
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(server.socket))
                sock.sendall(rpc.encode_request("monitor", db.monitor_params("hwsflow", COLUMNS), 0))
                reader = threading.Thread(target=_read_all, args=(sock, 2.0, chunks))
                reader.start()
                time.sleep(0.5)
                for command in SESSION:
                    server.vsctl(*command)
                reader.join()
            (directory / "ovsdb_session.jsonrpc").write_bytes(b"".join(chunks))
            errors: list[bytes] = []
            for request in BAD_REQUESTS:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(server.socket))
                    sock.sendall(request)
                    _read_all(sock, 1.0, errors)
            (directory / "ovsdb_errors.jsonrpc").write_bytes(b"".join(errors))
        finally:
            server.stop()
    print(subprocess.run(["ovsdb-server", "--version"], capture_output=True, text=True).stdout.splitlines()[0])


if __name__ == "__main__":
    record(Path(sys.argv[1]))
