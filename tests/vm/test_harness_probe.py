"""The VM harness boots, and psample delivers matchall/sample samples in it.

One boot: guest_probe.py does the work inside and writes probe.json; this
test only reads the report.  Needs tools/setup-test-env to have run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import guest_probe
from .harness import run_guest

# Boot plus probe take well under a minute alone; a loaded 2-core machine
# running TCG can be several times slower, so the margin is wide.
TIMEOUT = 900.0


def test_psample_samples_arrive_in_guest(tmp_path: Path) -> None:
    probe = Path(guest_probe.__file__).resolve()
    run = run_guest([sys.executable, str(probe), str(tmp_path)], rwdir=tmp_path, timeout=TIMEOUT)
    report_file = tmp_path / guest_probe.REPORT_FILE
    assert report_file.exists(), f"probe wrote no report (exit {run.exit_status})\n{run.console_tail()}"
    report = json.loads(report_file.read_text())
    context = f"report: {json.dumps(report, indent=1)}\nconsole tail:\n{run.console_tail()}"

    assert run.exit_status == 0, context
    assert report["modules"] == {m: "ok" for m in guest_probe.MODULES}, context
    assert report["samples_matching"] == guest_probe.FRAMES, context
    first = report["first_sample"]
    assert first["SAMPLE_GROUP"] == guest_probe.GROUP, context
    assert first["SAMPLE_RATE"] == guest_probe.RATE, context
    assert first["IIFINDEX"] == report["hvp0_ifindex"], context
    assert first["ORIGSIZE"] == guest_probe.FRAME_LEN, context
    assert first["DATA_len"] == guest_probe.FRAME_LEN, context
    # GROUP_SEQ numbers the group's samples in the order they were built.
    seqs = report["group_seqs"]
    assert seqs == sorted(set(seqs)), context
