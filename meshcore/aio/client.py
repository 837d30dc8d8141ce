"""Dialing HBONE connections (the pool decides when)."""
from __future__ import annotations

import asyncio
import socket
import ssl

from meshcore.aio.connection import HboneConnection
from meshcore.aio.tls import start_tls
from meshcore.identity.tls import handshake_error, verify_server

HANDSHAKE_TIMEOUT = 10.0


async def dial(host: str, port: int, context: ssl.SSLContext, expected, *,
               handshake_timeout: float = HANDSHAKE_TIMEOUT, local_addr=None,
               **connection_options) -> HboneConnection:
    """An mTLS HTTP/2 connection to an HBONE server whose SPIFFE id is one of
    `expected`. Raises IdentityError (with .reason) or OSError."""
    expected = tuple(expected)
    peer = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    family, _, _, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if local_addr is not None:
            sock.bind(local_addr)
        await asyncio.wait_for(loop.sock_connect(sock, address), handshake_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise                           # a TCP failure (refused, unreachable) is not an identity problem
    try:
        _, conn = await start_tls(
            loop, sock, context,
            lambda: HboneConnection(client=True, verify=lambda obj: verify_server(obj, expected, peer),
                                    **connection_options),
            server_side=False, timeout=handshake_timeout)
    except ssl.SSLError as exc:
        raise handshake_error(exc, peer) from None
    except (asyncio.TimeoutError, ConnectionError) as exc:
        raise handshake_error(exc, peer) from None
    if conn.error is not None:
        raise conn.error
    # the server's SETTINGS follow its handshake at once; with them the pool knows the
    # real stream limit before it puts more than the server allows on this connection
    try:
        await asyncio.wait_for(asyncio.shield(conn.settings_received), handshake_timeout)
    except (asyncio.TimeoutError, ConnectionError) as exc:
        conn.transport.abort()
        raise ConnectionError(f"HBONE server {peer} sent no SETTINGS: {exc!r}") from None
    except BaseException:
        conn.transport.abort()          # cancelled: nobody will own this connection
        raise
    return conn
