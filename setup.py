"""Build of lscjax's one compiled module, the CPU block-sparse kernel (an XLA FFI handler).

Everything else is in pyproject.toml. The kernel compiles against the XLA FFI headers that jaxlib
ships (a build requirement). It is optional: where it does not build, lscjax installs without it
and the sparse product takes its XLA path (`lscjax.sparse.cpu_kernel_available()` says which).
"""

import importlib.util
import os

from setuptools import Extension, setup

JAXLIB = os.path.dirname(importlib.util.find_spec("jaxlib").origin)

setup(
    ext_modules=[
        Extension(
            "lscjax._src.kernels._cpu",
            sources=["src/lscjax/_src/kernels/cpu.cc"],
            depends=["src/lscjax/_src/kernels/cpu_tile.inc"],
            include_dirs=[os.path.join(JAXLIB, "include")],
            extra_compile_args=["-std=c++17", "-O3"],
            language="c++",
            optional=True,
        )
    ]
)
