"""A workload for local meshes (`meshcore demo`, tests): an HTTP/1.1 service (keep-alive,
request bodies, upgrades echoed) that says who it is, where the request came from and
which mesh headers it carried, and a TCP echo port.

    python -m meshcore.localworkload --name web --http 127.0.0.1:8080 --echo 127.0.0.1:9000
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (Python's http.server: an implementation independent of
    meshcore's own): says who it is, who asked and what the mesh added; reads request
    bodies; an `Upgrade` request is answered 101 and then echoed byte for byte."""
    protocol_version = "HTTP/1.1"
    server_version = "meshcore-localworkload"
    name = "workload"

    def log_message(self, format, *args):        # noqa: A002  (quiet: the proxies log requests)
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass                       # trailers
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _answer(self) -> None:
        if self.headers.get("upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", self.headers["upgrade"])
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(1 << 16):
                self.connection.sendall(data)
            self.close_connection = True
            return
        received = self._body()
        text = f"hello from {self.name}: {self.requestline} from {self.client_address[0]}:{self.client_address[1]}\n"
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Received-Bytes", str(len(received)))
        for name in ("x-request-id", "traceparent", "x-forwarded-proto"):
            if self.headers.get(name):
                self.send_header(f"X-Seen-{name}", self.headers[name])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


def _http_server(name: str, address: tuple[str, int]) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"name": name})
    server = ThreadingHTTPServer(address, handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    servers = []
    http = _http_server(args.name, _address(args.http)) if args.http else None
    if args.echo:
        servers.append(await asyncio.start_server(echo, *_address(args.echo)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    if http is not None:
        http.shutdown()
        http.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m meshcore.localworkload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="workload", help="name it answers with")
    parser.add_argument("--http", metavar="HOST:PORT", help="serve HTTP/1.1 here")
    parser.add_argument("--echo", metavar="HOST:PORT", help="echo TCP here")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
