"""meshcore: a service-mesh data plane (HBONE tunnels, mTLS identities, authorization)
with a compiled Cython core.

The protocol engine is sans-IO: `H2Connection` turns bytes into events and commands
into bytes. Importing meshcore without its compiled core raises ImportError with
build instructions; there is no pure-Python fallback.
"""
from meshcore import _core  # noqa: F401  (fails loudly when the extensions are missing)
from meshcore._core import events
from meshcore._core.h2conn import H2Connection
from meshcore import errors as _errors
from meshcore.errors import *  # noqa: F401,F403  (the exception tree, listed once in errors.__all__)

from meshcore.mesh import Mesh  # noqa: E402  (after the core, which it builds on)

__version__ = "0.1.0"

__all__ = ["Mesh", "H2Connection", "events", *_errors.__all__, "__version__"]
