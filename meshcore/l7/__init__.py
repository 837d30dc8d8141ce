"""meshcore's L7 layer for `meshcore waypoint`: HTTP/1.1 on both sides of the proxy."""
from meshcore.errors import HttpError
from meshcore.l7.http1 import (
    Http1ClientConnection,
    Http1Request,
    Http1Response,
    Http1ServerConnection,
    strip_hop_by_hop,
)

__all__ = ["Http1ClientConnection", "Http1Request", "Http1Response", "Http1ServerConnection", "HttpError",
           "strip_hop_by_hop"]
