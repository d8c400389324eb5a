"""`./dev demo`: boot the test VM, run hwsflow on a veth port under ping traffic, print what a collector decodes."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.vm import harness

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hwsflow-demo-") as tmp:
        rwdir = Path(tmp)
        print("booting the test VM (software emulation: about a minute)...", flush=True)
        run = harness.run_guest([sys.executable, str(REPO / "tests/vm/demo_guest.py"), str(rwdir)], rwdir, 900.0)
        log = rwdir / "demo.log"
        decoded = rwdir / "decoded.txt"
        print("\n== hwsflow run (agent log) ==")
        print(log.read_text() if log.exists() else "(no log)")
        print("== hwsflow decode (the collector's view) ==")
        print(decoded.read_text() if decoded.exists() else "(nothing decoded)")
        if run.exit_status != 0:
            print(f"demo failed (guest exit {run.exit_status}); console tail:\n{run.console[-3000:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
