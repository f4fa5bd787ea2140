"""Build the native ring buffer (`streamload.transport._ring`) alongside the pure-Python package.

Build switches (environment variables read at build time):
  STREAMLOAD_SANITIZE=address,undefined   compile and link with -fsanitize=...
  STREAMLOAD_DEBUG=1                      -O0 -g3, assertions on (no -DNDEBUG)
"""

import os

from setuptools import Extension, setup

sanitize = os.environ.get("STREAMLOAD_SANITIZE", "").strip()
debug = os.environ.get("STREAMLOAD_DEBUG", "") not in ("", "0")

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"]
link_args: list[str] = []
undef_macros: list[str] = []
if debug or sanitize:
    compile_args += ["-O0", "-g3", "-fno-omit-frame-pointer"]
    undef_macros.append("NDEBUG")
else:
    compile_args += ["-O2"]
if sanitize:
    compile_args.append(f"-fsanitize={sanitize}")
    link_args.append(f"-fsanitize={sanitize}")

setup(
    ext_modules=[
        Extension(
            "streamload.transport._ring",
            sources=["native/ring.c", "native/ringmodule.c"],
            depends=["native/ring.h"],
            include_dirs=["native"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            undef_macros=undef_macros,
        )
    ]
)
