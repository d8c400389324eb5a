"""One VM boot serves every test in tests/vm: the guest runs all scenario modules (scenarios.py),
and these session fixtures hand its results to the test files that judge them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.vm import harness

REPO = Path(__file__).resolve().parents[2]
GUEST_TIMEOUT = 3000.0  # s; a healthy run takes about ten minutes under emulation, twice that on a loaded host
# Development only: HWSFLOW_VM_ONLY="scenarios_operations scenarios" boots the VM for those modules alone;
# the tests of the others then fail for want of results.  CI leaves it unset and runs everything.
ONLY = os.environ.get("HWSFLOW_VM_ONLY", "").split()


@pytest.fixture(scope="session")
def vm(tmp_path_factory) -> dict:
    rwdir = tmp_path_factory.mktemp("vm")
    run = harness.run_guest([sys.executable, str(REPO / "tests/vm/scenarios.py"), str(rwdir), *ONLY], rwdir, GUEST_TIMEOUT)
    results_file = rwdir / "results.json"
    assert results_file.exists(), f"the guest wrote no results (exit {run.exit_status}); console tail:\n{run.console[-4000:]}"
    results = json.loads(results_file.read_text())
    results["_exit_status"] = run.exit_status
    results["_boot_s"] = run.elapsed
    return results


@pytest.fixture(scope="session")
def datagrams(vm) -> dict[str, list[bytes]]:
    return {k: [bytes.fromhex(d) for d in v] for k, v in vm["datagrams"].items()}
