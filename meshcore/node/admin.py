"""The node's HTTP endpoints: admin (15000), metrics (15020), readiness (15021).

A deliberately small HTTP/1.1 server (one request per connection, no bodies in,
answers of a few hundred KiB at most) for localhost operators and Prometheus.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("meshcore.admin")

# handler(method, query) -> (status, content type, body)
Handler = Callable[[str, dict], Awaitable[tuple[int, str, bytes]] | tuple[int, str, bytes]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
MAX_HEAD = 16 * 1024


class HttpEndpoints:
    def __init__(self, routes: dict[str, Handler]):
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> "HttpEndpoints":
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        return self

    @property
    def address(self) -> tuple:
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            handler = self.routes.get(url.path)
            if handler is None:
                status, ctype, body = 404, "text/plain", f"no endpoint {url.path}; try: {', '.join(self.routes)}\n".encode()
            else:
                answer = handler(method, parse_qs(url.query))
                status, ctype, body = await answer if asyncio.iscoroutine(answer) else answer
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("admin endpoint failed")
            status, ctype, body = 500, "text/plain", b"internal error (see the node's log)\n"
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()
