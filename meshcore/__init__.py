"""meshcore: a service-mesh data plane (HBONE tunnels, mTLS identities, authorization)
with a compiled Cython core.

The protocol engine is sans-IO: `H2Connection` turns bytes into events and commands
into bytes. Importing meshcore without its compiled core raises ImportError with
build instructions; there is no pure-Python fallback.
"""
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _has_core(package: _Path) -> bool:
    return any(package.glob("_core/*.so")) or any(package.glob("_core/*.pyd"))


def _use_installed_build() -> None:
    """Started inside a source checkout that was never built in place, the checkout's
    meshcore/ folder shadows the installed package (Python puts the current directory
    first on the path). The installed build of the same version is used then, so
    programs and snippets run from the checkout work; another version is refused."""
    here = _Path(__file__).resolve().parent
    if _has_core(here):
        return
    for entry in _sys.path:
        other = _Path(entry or ".").resolve() / "meshcore"
        if other == here or not _has_core(other):
            continue
        if f'__version__ = "{__version__}"' not in (other / "__init__.py").read_text():
            raise ImportError(
                f"meshcore was imported from the source tree at {here}, which has no compiled core, "
                f"and the installed build at {other} is another version: the checkout's meshcore/ folder "
                "shadows it for programs started in the checkout. Run from another directory, or work in "
                "the checkout with an editable install (`pip install -e .`, which builds the core in place).")
        __path__[:] = [str(other)]
        return


_use_installed_build()

from meshcore import _core  # noqa: E402,F401  (fails loudly when the extensions are missing)
from meshcore._core import events  # noqa: E402
from meshcore._core.h2conn import H2Connection
from meshcore import errors as _errors
from meshcore.errors import *  # noqa: F401,F403  (the exception tree, listed once in errors.__all__)

from meshcore.mesh import Mesh  # noqa: E402  (after the core, which it builds on)

__all__ = ["Mesh", "H2Connection", "events", *_errors.__all__, "__version__"]
