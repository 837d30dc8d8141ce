"""Build meshcore's compiled core.

Every ``src/meshcore/_core/*.pyx`` becomes the extension ``meshcore._core.<name>``,
installed beside the pure-Python package in ``meshcore/``. Switches:

* ``MESHCORE_DEBUG=1``: bounds/wraparound checks on, no optimisation, assertions kept.
* ``MESHCORE_CYTHON_TRACE=1``: line tracing for coverage and profilers (slow).

``meshcore.aio.openssl`` links libssl and libcrypto (OpenSSL 3: Debian's libssl-dev).
"""
import os
from pathlib import Path

from setuptools import find_packages, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build-time guard
    raise SystemExit(
        "meshcore needs Cython to build its compiled core: `pip install .` installs it "
        "from the build requirements; for `python setup.py ...` run `pip install Cython` first."
    ) from exc
from setuptools import Extension

HERE = Path(__file__).parent
SRC = HERE / "src"
DEBUG = os.environ.get("MESHCORE_DEBUG") == "1"
# extensions that call a system library, and the libraries they link
LIBRARIES = {"meshcore.aio.openssl": ["ssl", "crypto"]}
TRACE = os.environ.get("MESHCORE_CYTHON_TRACE") == "1"


def extensions():
    macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
    exts = []
    for pyx in sorted(SRC.rglob("*.pyx")):
        name = ".".join(pyx.relative_to(SRC).with_suffix("").parts)
        exts.append(
            Extension(
                name,
                [str(pyx.relative_to(HERE))],
                define_macros=macros,
                extra_compile_args=cflags,
                libraries=LIBRARIES.get(name, []),
            )
        )
    return cythonize(
        exts,
        include_path=[str(SRC)],
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "cdivision": True,
            "initializedcheck": DEBUG,
            "embedsignature": True,
            "linetrace": TRACE,
        },
        build_dir="build/cython",
    )


setup(
    packages=find_packages(include=["meshcore", "meshcore.*"]),
    package_data={"meshcore": ["py.typed"], "meshcore._core": ["*.pyi"],
                  "meshcore.xds.proto": ["*.proto", "*.pyi"]},
    ext_modules=extensions(),
    zip_safe=False,
)
