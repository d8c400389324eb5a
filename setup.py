"""The optional compiled loop; everything else is in pyproject.toml.

optional=True: where the extension cannot be built (no C compiler or Python headers), the install
goes on without it and hwsflow runs its Python path (hwsflow/core/fastpath.py says which runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hwsflow.core._fastpath",
            sources=["hwsflow/core/_fastpath.c", "hwsflow/core/fastpath_core.c"],
            depends=["hwsflow/core/fastpath_core.h"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ],
)
