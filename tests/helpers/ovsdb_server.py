"""A real ovsdb-server with a throwaway Open_vSwitch database, for tests of hwsflow's OVSDB client.

ovsdb-server needs no kernel module and no ovs-vswitchd: `ovs-vsctl --no-wait`
edits the database exactly as an operator's commands do (add-br, add-port,
external_ids, sflow), and the server sends the monitor updates Open vSwitch's
own daemons get.  Debian's openvswitch-switch (tools/setup-test-env) provides
ovsdb-tool, ovsdb-server, ovs-vsctl and the schema.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class OvsdbServer:
    def __init__(self, directory: Path, schema: Path = SCHEMA) -> None:
        self.directory = directory
        self.schema = schema  # another schema makes a server of another database (not Open_vSwitch)
        self.socket = directory / "db.sock"
        self.database = directory / "conf.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OvsdbServer:
        if not self.database.exists():
            subprocess.run(["ovsdb-tool", "create", str(self.database), str(self.schema)], check=True)
        self.proc = subprocess.Popen(
            ["ovsdb-server", str(self.database), f"--remote=punix:{self.socket}",
             f"--unixctl={self.directory / 'ovsdb-server.ctl'}", f"--log-file={self.directory / 'ovsdb-server.log'}",
             "--no-chdir"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovsdb-server did not start: {(self.directory / 'ovsdb-server.log').read_text()}")
            time.sleep(0.02)
        if self.schema == SCHEMA:
            self.vsctl("init")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
        self.socket.unlink(missing_ok=True)

    def vsctl(self, *argv: str) -> str:
        """ovs-vsctl on this database; --no-wait: there is no ovs-vswitchd to wait for."""
        done = subprocess.run(["ovs-vsctl", f"--db=unix:{self.socket}", "--no-wait", "--timeout=30", *argv],
                              check=True, capture_output=True, text=True)
        return done.stdout
