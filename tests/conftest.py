"""Markers by place in the tree: tests/unit -> unit, tests/system -> system, tests/vm -> vm.

The quick loop leaves the VM out: `./dev test -m "not vm"`.  A test file anywhere else is an error, so
that every test carries the marker of its kind.  `root` marks the tests that need root (CI runs as
root); a developer without it runs `-m "not vm and not root"`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timing assertion, and speed is `hwsflow bench`'s business: on a
# busy shared machine one example took 410 ms and then 5 ms on replay, a FlakyFailure that finds nothing.
# Many tests already said deadline=None; this says it once for all.
settings.register_profile("hwsflow", deadline=None)
settings.load_profile("hwsflow")

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "system", "vm")

# Tests that need root, by file (None: the whole file) and test name.  Listed here rather than marked
# in the files so that the marker's rule lives in one place; a name that no longer exists is an error.
NEEDS_ROOT: dict[str, set[str] | None] = {
    "system/test_bench.py": None,  # the benchmark unicasts netlink messages to another socket's port id
    "unit/daemon/test_receive.py": {"test_send_buffer_sends_each_slot_as_its_own_netlink_message"},
    "unit/linux/test_control.py": {
        "test_root_gets_answers_and_the_files_are_root_only",
        "test_a_non_root_peer_is_refused_even_through_an_open_socket_file",  # drops to uid 65534
    },
}


def kind_of(path: Path) -> str:
    rel = path.resolve().relative_to(TESTS)
    if len(rel.parts) < 2 or rel.parts[0] not in KINDS:
        raise pytest.UsageError(f"{rel}: a test belongs under one of tests/{{{','.join(KINDS)}}}/")
    return rel.parts[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seen: dict[str, set[str]] = {}
    for item in items:
        item.add_marker(kind_of(item.path))
        rel = item.path.resolve().relative_to(TESTS).as_posix()
        name = getattr(item, "originalname", item.name)
        seen.setdefault(rel, set()).add(name)
        if rel in NEEDS_ROOT and (NEEDS_ROOT[rel] is None or name in NEEDS_ROOT[rel]):
            item.add_marker("root")
    for rel, names in NEEDS_ROOT.items():
        if rel in seen and names is not None and names - seen[rel]:
            raise pytest.UsageError(f"conftest NEEDS_ROOT lists tests that {rel} no longer has: {sorted(names - seen[rel])}")
