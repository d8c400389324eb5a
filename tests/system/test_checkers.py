"""mypy and ruff pass on the tree, with the configuration in pyproject.toml (installed by the test extra).

Each runs as the developer would run it from the repository root; a finding fails the test with the
checker's own output.  A planted finding shows that the configuration really checks.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.paths import REPO

TIMEOUT = 600  # s; a cold mypy run over the package takes about half a minute on a busy 2-core machine


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_mypy_passes_strict_on_the_package():
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_strict(tmp_path):
    # an unannotated function is fine for default mypy, an error under strict
    planted = tmp_path / "planted.py"
    planted.write_text("def f(x):\n    return x\n")
    result = run("mypy", "--config-file", str(REPO / "pyproject.toml"), str(planted))
    assert result.returncode == 1 and "[no-untyped-def]" in result.stdout, result.stdout + result.stderr


def test_ruff_passes_on_the_tree():
    result = run("ruff", "check", "--no-fix", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_applies_the_projects_rules():
    # F401 (an unused import) and UP035 (typing's aliases of collections.abc) are in the selected rules
    planted = "from typing import Iterator\nimport os\n"
    result = run("ruff", "check", "--no-fix", "--stdin-filename", "hwsflow/planted.py", "-", stdin=planted)
    assert result.returncode == 1 and "F401" in result.stdout and "UP035" in result.stdout, result.stdout
