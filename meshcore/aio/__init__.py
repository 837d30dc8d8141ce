"""The asyncio shell: the only code that touches sockets. It moves bytes between
transports and meshcore._core; it never parses protocol bytes itself."""
from meshcore._core import not_built

try:
    from meshcore.aio import datapath  # noqa: F401  (the compiled per-chunk path)
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise not_built(exc) from exc

from meshcore.aio.client import dial
from meshcore.aio.connection import HboneConnection
from meshcore.aio.datapath import StreamTransport
from meshcore.aio.relay import RelayListener
from meshcore.aio.server import HboneServer, TunnelRequest, parse_authority, relay_to_authority
from meshcore.aio.splice import Splice, abort_with_rst

__all__ = ["HboneConnection", "HboneServer", "RelayListener", "StreamTransport", "Splice", "TunnelRequest", "dial",
           "parse_authority", "relay_to_authority", "abort_with_rst"]
