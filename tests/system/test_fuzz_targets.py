"""The fuzz targets run briefly in every test run, so they cannot rot; the runner reports what they find.

Longer runs: `python -m fuzz.run TARGET --seconds N` (see fuzz/run.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fuzz import fastpath_target, run

# inputs per target: thousands, within seconds (the config target parses YAML, ~700 inputs/s)
# (the native fastpath target runs ~100k inputs/s: its 30,000 take well under a second after its build)
BRIEF_RUNS = {"psample": 3000, "control": 3000, "config": 2000, "fastpath": 30000}


@pytest.mark.parametrize("target", sorted(run.TARGETS))
def test_each_target_runs_thousands_of_inputs_without_a_crash(target, tmp_path):
    result = run.run(target, runs=BRIEF_RUNS[target], work=tmp_path)
    log = (tmp_path / "last-run.log").read_text(errors="replace")
    assert not result.crashed, f"{result.summary()}\n{log[-4000:]}"
    assert result.runs >= BRIEF_RUNS[target], log[-2000:]
    assert "INITED" in log  # libFuzzer ran the seed corpus through the target first
    assert any((tmp_path / "corpus").iterdir())


BROKEN = """
import time

def one_input(data):
    if data.startswith(b"boom"):
        raise ValueError("the kind of exception a parser must never let escape")
    if data.startswith(b"hang"):
        while True:
            time.sleep(0.01)

def seeds():
    return [SEED]
"""


@pytest.mark.parametrize("seed, kind", [(b"boom", "crash-"), (b"hang", "timeout-")])
def test_the_runner_reports_a_crash_or_a_hang_with_its_input(tmp_path, monkeypatch, seed, kind):
    module = f"broken_{seed.decode()}"  # a name of its own: the runner imports it here for seeds()
    (tmp_path / f"{module}.py").write_text(BROKEN.replace("SEED", repr(seed)))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the fuzzer's process
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run.run(module, runs=100, work=tmp_path / "work", timeout=1)
    assert result.crashed
    (artifact,) = result.artifacts
    assert kind in artifact and Path(artifact).read_bytes() == seed
    assert "CRASH" in result.summary()


def test_the_native_harness_catches_an_out_of_bounds_read_in_the_core(tmp_path):
    """The compiled loop's harness under AddressSanitizer: a core that copies the header bytes the group
    keeps without bounding them by DATA's length reads past the message, and the seeds alone show it."""
    core = fastpath_target.CORE.read_text()
    bounded = "return usual->data_len < group->header ? usual->data_len : group->header;"
    assert bounded in core
    broken = tmp_path / "fastpath_core.c"
    broken.write_text(core.replace(bounded, "(void)usual; return group->header;"))
    work = tmp_path / "work"
    binary = fastpath_target.build(work, broken)
    corpus, crashes = run.prepare(run.TARGETS["fastpath"], work)
    done = subprocess.run([str(binary), str(corpus), f"-artifact_prefix={crashes}/", "-runs=2000"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in done.stderr
    assert any(crashes.iterdir())
