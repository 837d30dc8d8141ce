"""Several named backends in one process, each answering with what it received, so that
a test through the mesh can tell which backend answered and what reached it.

    python tests/support/echo_backends.py --http one=127.n.3.1:8080 --http bad=127.n.3.3:8080:503 \\
        --grpc one=127.n.3.1:50051

HTTP/1.1 (keep-alive): every request is answered, after its `x-delay-ms` if it has
one, with the backend's status (200 unless one is given after the address),
`x-backend: NAME` and a JSON body `{"backend", "method", "path", "host", "headers",
"body"}` (header names lowercased, a repeated one joined with "," as the conformance
suite's echo server reports it). `GET /__seen` on a backend's own address answers the
list of `{"method", "path", "headers", "body"}` it received before, in order, itself
not included: a request that reached a backend off the client's path (a mirror, a
retry's first try) shows there.
gRPC (grpcio): any unary method of any service answers the JSON `{"backend", "method",
"request", "metadata"}` (the invocation metadata, a repeated key joined with ","), with
`x-backend: NAME` in the trailing metadata; given a status code after the address
(`--grpc bad=HOST:PORT:14`), every call ends with that status instead, without a
message (Trailers-Only).
Prints `ready` once every listener accepts.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from concurrent import futures


class HttpBackend:
    def __init__(self, name: str, status: int):
        self.name, self.status = name, status
        self.seen: list[dict] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        name, value = name.strip().lower(), value.strip()
                        headers[name] = f"{headers[name]},{value}" if name in headers else value
                content = (await self._body(reader, headers)).decode(errors="replace")
                if target != "/__seen":
                    # recorded as it arrives: a request given up while it waits was still received
                    self.seen.append({"method": method, "path": target, "headers": headers, "body": content})
                if headers.get("x-delay-ms"):
                    await asyncio.sleep(int(headers["x-delay-ms"]) / 1000)
                if target == "/__seen":
                    status, body = 200, json.dumps(self.seen).encode()
                else:
                    status = self.status
                    body = json.dumps({"backend": self.name, "method": method, "path": target,
                                       "host": headers.get("host", ""), "headers": headers, "body": content}).encode()
                writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Answer'}\r\n"
                             f"content-type: application/json\r\nx-backend: {self.name}\r\n"
                             f"content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":      # trailers
                pass
            return body
        return await reader.readexactly(int(headers.get("content-length", "0") or 0))


def grpc_server(name: str, address: str):
    import grpc
    host, port, *code = address.split(":")
    failing = next(c for c in grpc.StatusCode if c.value[0] == int(code[0])) if code else None

    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method

            def unary(request, context):
                metadata: dict[str, str] = {}
                for key, value in context.invocation_metadata():
                    if isinstance(value, str):
                        metadata[key] = f"{metadata[key]},{value}" if key in metadata else value
                context.set_trailing_metadata((("x-backend", name),))
                if failing is not None:
                    context.abort(failing, f"{name} fails every call")
                return json.dumps({"backend": name, "method": method, "request": request.decode(errors="replace"),
                                   "metadata": metadata}).encode()
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((Any(),))
    if server.add_insecure_port(f"{host}:{port}") != int(port):
        raise SystemExit(f"grpc: cannot listen on {address}")
    server.start()
    return server


async def main(args) -> None:
    servers = []
    for spec in args.http:
        name, _, rest = spec.partition("=")
        host, port, *status = rest.split(":")
        backend = HttpBackend(name, int(status[0]) if status else 200)
        servers.append(await asyncio.start_server(backend.serve, host, int(port)))
    grpc_servers = [grpc_server(*spec.split("=", 1)) for spec in args.grpc]
    stop = asyncio.Event()
    # SIGTERM ends it with status 0, as the mesh's own processes end
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        for server in grpc_servers:
            server.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="append", default=[], help="NAME=HOST:PORT[:STATUS]")
    parser.add_argument("--grpc", action="append", default=[], help="NAME=HOST:PORT[:GRPC_STATUS]")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
