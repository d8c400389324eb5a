"""Whether the compiled per-sample loop runs, and why not.

hwsflow/core/_fastpath.c (CPython glue) and fastpath_core.c (plain C) build the optional extension
hwsflow.core._fastpath; its interface is _fastpath.pyi.  Without it (a source install on a host
without a C compiler) or with HWSFLOW_PURE_PYTHON=1, SamplePipeline runs its Python path alone: the
same datagrams and accounting, at a lower rate.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwsflow.core._fastpath import Loop as Loop  # the compiled loop's type, for the pipeline
    from hwsflow.core._fastpath import Outbox as Outbox  # where it finishes datagrams

ENV_PURE_PYTHON = "HWSFLOW_PURE_PYTHON"  # set to anything but "" or "0": the Python path


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV_PURE_PYTHON, "") not in ("", "0"):
        return None, f"python ({ENV_PURE_PYTHON} is set)"
    try:
        from hwsflow.core import _fastpath
    except ImportError as err:
        return None, f"python (compiled loop not built: {err})"
    return _fastpath, "compiled"


def available() -> bool:
    """The compiled loop is built and not turned off."""
    return _load()[0] is not None


def describe() -> str:
    """"compiled", or "python (why)": what the agent logs at start and status shows."""
    return _load()[1]


def module() -> ModuleType:
    """The compiled module, whatever the environment says; ImportError if it is not built."""
    from hwsflow.core import _fastpath

    return _fastpath
