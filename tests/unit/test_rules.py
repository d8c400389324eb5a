"""The house rules hold on the code (hwsflow/ and fuzz/): wire and core import nothing from linux or daemon
(nor from tools or the CLI above them), and no module uses another module's _private names.  Each checker is
first shown to catch a planted violation.  Tests may reach into what they test, so tests/ is not checked."""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers.paths import REPO
from tests.helpers.rules import check_tree, layer_violations, module_name, private_violations, python_files

CODE = ("hwsflow", "fuzz")


def layers(source: str, module: str = "hwsflow.core.planted", is_package: bool = False) -> list[str]:
    return [v.what for v in layer_violations(textwrap.dedent(source), "planted.py", module, is_package)]


def private(source: str, module: str = "hwsflow.core.planted") -> list[str]:
    return [v.what for v in private_violations(textwrap.dedent(source), "planted.py", module)]


@pytest.mark.parametrize("source", [
    "import hwsflow.linux.tc\n",
    "import hwsflow.daemon.agent as agent\n",
    "from hwsflow.linux import mmsg\n",
    "from hwsflow import daemon\n",
    "from hwsflow.daemon.receive import drain\n",
    "def late():\n    from hwsflow.linux.collectors import open_collectors\n",  # function-level
    "class A:\n    def m(self):\n        import hwsflow.daemon.ports\n",
    "from ..linux import rtnl\n",  # relative, from hwsflow.core.planted
    "from .. import daemon\n",
    "from hwsflow.tools import bench\n",
    "from hwsflow import cli\n",
])
def test_the_layer_checker_catches_an_import_from_above(source):
    assert layers(source), source


def test_the_layer_checker_resolves_relative_imports_from_a_package():
    # in hwsflow/core/__init__.py, `from ..linux import x` is hwsflow.linux; `from . import y` stays in core
    assert layers("from ..linux import tc\n", module="hwsflow.core", is_package=True)
    assert not layers("from . import pipeline\n", module="hwsflow.core", is_package=True)


@pytest.mark.parametrize("source", [
    "import struct\nfrom hwsflow.wire import sflow\nfrom hwsflow.core.groups import GroupTable\n",
    "from hwsflow.linuxish import x\n",  # a name that only starts like a layer
    "from . import datasource\n",
    "import hwsflow\n",
])
def test_the_layer_checker_lets_the_pure_layers_import_each_other_and_the_stdlib(source):
    assert not layers(source)


def test_the_layer_rule_binds_only_the_pure_layers():
    assert not layers("from hwsflow.linux import tc\n", module="hwsflow.daemon.agent")
    assert layers("from hwsflow.linux import tc\n", module="hwsflow.wire.sflow")


@pytest.mark.parametrize("source,what", [
    ("from hwsflow.wire.sflow import _FLOW_COMPACT\n", "imports private name _FLOW_COMPACT from hwsflow.wire.sflow"),
    ("from .sflow import DatagramBuilder, _U32_MASK\n", "imports private name _U32_MASK from hwsflow.core.sflow"),
    ("from hwsflow.wire import sflow\nx = sflow._FLOW_COMPACT\n", "uses private _FLOW_COMPACT of module sflow"),
    ("import hwsflow.wire.sflow as s\ns._pack(1)\n", "uses private _pack of module s"),
    ("def f(builder):\n    builder._pos = 4\n", "uses private _pos of object builder"),
    ("class P:\n    def f(self):\n        return self.builder._buf\n", "uses private _buf of object self.builder"),
    ("def f(b):\n    b._finish(0)\n", "uses private _finish of object b"),
    ("from os import _wrap_close\n", "imports private name _wrap_close from os"),
    ("import _thread\n", "imports private module _thread"),
])
def test_the_private_checker_catches_another_modules_private_names(source, what):
    assert what in private(source)


@pytest.mark.parametrize("source", [
    "class A:\n    def f(self):\n        self._x = 1\n        return self._x\n",
    "class A:\n    @classmethod\n    def f(cls):\n        return cls._table\n",
    "class B(A):\n    def f(self):\n        return super()._helper()\n",
    "_LOCAL = 1\ndef f():\n    return _LOCAL\n",  # the module's own private names
    "import collections\nP = collections.namedtuple('P', 'a b')\nP(1, 2)._replace(a=3)._asdict()\n",
    "import os\nos._exit(0)\n",
    "import sys\nsys._getframe(0)\n",
    "import ctypes\nclass S(ctypes.Structure):\n    _fields_ = []\nS._fields_\n",  # sunder: ctypes' protocol
    "x = object().__class__.__name__\n",  # dunders
])
def test_the_private_checker_allows_own_state_and_conventions(source):
    assert private(source) == []


def test_a_module_may_import_its_private_twin_and_no_other_module_may():
    twin = "from hwsflow.core import _fastpath\nfrom hwsflow.core._fastpath import Loop\nimport hwsflow.core._fastpath\n"
    assert private(twin, module="hwsflow.core.fastpath") == []
    assert private(twin, module="hwsflow.core.pipeline") == [
        "imports private name _fastpath from hwsflow.core",
        "imports from private module hwsflow.core._fastpath",
        "imports private module hwsflow.core._fastpath",
    ]
    assert private("from hwsflow.wire import _sflow\n", module="hwsflow.core.sflow")  # a twin is in its own package


def test_module_names_follow_the_files():
    assert module_name(REPO / "hwsflow/wire/sflow.py", REPO) == "hwsflow.wire.sflow"
    assert module_name(REPO / "hwsflow/core/__init__.py", REPO) == "hwsflow.core"


def test_the_tree_check_reads_every_layer():
    # a walk that found nothing to read would pass the tree test vacuously
    files = {p.relative_to(REPO).as_posix() for p in python_files(REPO, *CODE)}
    assert {"hwsflow/wire/sflow.py", "hwsflow/core/pipeline.py", "hwsflow/linux/tc.py", "fuzz/run.py"} <= files


def test_wire_and_core_import_nothing_from_linux_or_daemon():
    found = check_tree(layer_violations, REPO, *CODE)
    assert not found, "layer rule broken:\n" + "\n".join(map(str, found))


def test_no_module_uses_another_modules_private_names():
    found = check_tree(private_violations, REPO, *CODE)
    assert not found, "private names used across modules:\n" + "\n".join(map(str, found))


def test_the_tree_check_finds_violations_planted_in_files(tmp_path):
    (tmp_path / "hwsflow" / "core").mkdir(parents=True)
    (tmp_path / "hwsflow" / "core" / "__init__.py").write_text("from ..daemon import agent\n")
    (tmp_path / "hwsflow" / "core" / "planted.py").write_text("def f(b):\n    from hwsflow.linux import tc\n    b._pos = 1\n")
    assert [str(v) for v in check_tree(layer_violations, tmp_path, "hwsflow")] == [
        "hwsflow/core/__init__.py:1: hwsflow.core (a pure layer) imports hwsflow.daemon",
        "hwsflow/core/__init__.py:1: hwsflow.core (a pure layer) imports hwsflow.daemon.agent",
        "hwsflow/core/planted.py:2: hwsflow.core.planted (a pure layer) imports hwsflow.linux",
        "hwsflow/core/planted.py:2: hwsflow.core.planted (a pure layer) imports hwsflow.linux.tc",
    ]
    assert [str(v) for v in check_tree(private_violations, tmp_path, "hwsflow")] == [
        "hwsflow/core/planted.py:3: uses private _pos of object b",
    ]
