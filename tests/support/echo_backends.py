"""Several named backends in one process, each answering with what it received, so that
a test through the mesh can tell which backend answered and what reached it.

    python tests/support/echo_backends.py --http one=127.n.3.1:8080 --http bad=127.n.3.3:8080:503 \\
        --grpc one=127.n.3.1:50051 --h2 one=127.n.3.1:8081

HTTP/1.1 (keep-alive): every request is answered, after its `x-delay-ms` if it has
one, with the backend's status (200 unless one is given after the address),
`x-backend: NAME` and a JSON body `{"backend", "method", "path", "host", "headers",
"body", "size", "sha256", "connection"}` (header names lowercased, a repeated one
joined with "," as the conformance suite's echo server reports it; "body" only up to
64 KiB, else null; "connection": which TCP connection of the backend's carried it,
numbered from 1 as they were accepted). `GET /__seen` on a backend's own address
answers the list of `{"method", "path", "headers", "body", "size", "sha256",
"connection", "protocol"}` it received before, in order, itself not included: a
request that reached a backend off the client's path (a mirror, a retry's first try)
shows there. A request with `x-stall-backend: NAME` naming the backend is recorded
(`"stalled": true`) and its body never read: the connection stays open, silent, for
STALL seconds.
HTTP/2 (`--h2`, h2c with prior knowledge, python-hyper's h2): the same answers (after
`x-delay-ms` too) and the same `x-stall-backend` (the stream's window never given
back), recorded in the `/__seen` of the HTTP/1.1 backend of the same name
(`"protocol": "h2"`, and the request's `"authority"`).
gRPC (grpcio): any unary method of any service answers the JSON `{"backend", "method",
"request", "metadata", "peer"}` (the invocation metadata, a repeated key joined with
","; the client's address and port, which tell its TCP connections apart), with
`x-backend: NAME` in the trailing metadata; given a status code after the address
(`--grpc bad=HOST:PORT:14`), every call ends with that status instead, without a
message (Trailers-Only).
Prints `ready` once every listener accepts.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
from concurrent import futures

STALL = 30.0                 # seconds a stalled request's connection stays open, unread
ECHOED_BODY = 64 * 1024      # bodies up to this size are echoed as text
SEEN: dict[str, list[dict]] = {}     # backend name -> what it received, either HTTP version


def _received(method: str, target: str, headers: dict, body: bytes, connection: int, protocol: str) -> dict:
    return {"method": method, "path": target, "headers": headers,
            "body": body.decode(errors="replace") if len(body) <= ECHOED_BODY else None,
            "size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "connection": connection,
            "protocol": protocol}


class HttpBackend:
    def __init__(self, name: str, status: int):
        self.name, self.status = name, status
        self.seen: list[dict] = SEEN.setdefault(name, [])
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
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
                if headers.get("x-stall-backend") == self.name:
                    self.seen.append({"method": method, "path": target, "headers": headers, "stalled": True,
                                      "connection": connection, "protocol": "http/1.1"})
                    await asyncio.sleep(STALL)
                    return
                raw = await self._body(reader, headers)
                received = _received(method, target, headers, raw, connection, "http/1.1")
                if target != "/__seen":
                    # recorded as it arrives: a request given up while it waits was still received
                    self.seen.append(received)
                if headers.get("x-delay-ms"):
                    await asyncio.sleep(int(headers["x-delay-ms"]) / 1000)
                if target == "/__seen":
                    status, body = 200, json.dumps(self.seen).encode()
                else:
                    status = self.status
                    body = json.dumps({"backend": self.name, "host": headers.get("host", ""), **received}).encode()
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
            body = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":      # trailers
                pass
            return bytes(body)
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
                                   "metadata": metadata, "peer": context.peer()}).encode()
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((Any(),))
    if server.add_insecure_port(f"{host}:{port}") != int(port):
        raise SystemExit(f"grpc: cannot listen on {address}")
    server.start()
    return server


class _Discard:
    def write(self, data) -> None:
        pass


def _h2_server_endpoint(reader, writer):
    """tests/support/h2http.py's Endpoint (windows given back by hand), its settings all in
    its first SETTINGS frame: h2 checks the frames of one read against the frame size in
    force when the read began, so a larger frame a client sends right after its
    acknowledgement of a second SETTINGS frame, in the same read, would be refused."""
    import h2.config
    import h2.connection
    import h2.settings
    from h2http import STREAM_WINDOW, Endpoint
    ep = Endpoint(reader, _Discard(), client=False, auto_ack=False)
    codes = h2.settings.SettingCodes
    ep.conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=True))
    ep.conn.local_settings = h2.settings.Settings(client=False, initial_values={
        codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW, codes.MAX_FRAME_SIZE: 1 << 20, codes.ENABLE_PUSH: 0})
    ep.conn.max_inbound_frame_size = 1 << 20
    ep.conn.initiate_connection()
    ep.conn.increment_flow_control_window(64 * 1024 * 1024 - 65535)
    ep.writer = writer
    ep.flush()
    return ep


class H2Backend:
    """h2c with prior knowledge: each request answered as the HTTP/1.1 backend answers."""

    def __init__(self, name: str):
        self.name = name
        self.seen: list[dict] = SEEN.setdefault(name, [])
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        ep = _h2_server_endpoint(reader, writer)
        tasks = set()

        def new_stream(sid, event):
            task = asyncio.get_running_loop().create_task(self._request(ep, sid, event, ep.queue(sid), connection))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        ep.on_new_stream = new_stream
        try:
            await ep.run()
        finally:
            for task in list(tasks):
                task.cancel()
            writer.close()

    async def _request(self, ep, sid, event, queue, connection: int) -> None:
        import h2.events
        fields = [(n.decode(), v.decode()) for n, v in event.headers]
        pseudo = {n: v for n, v in fields if n.startswith(":")}
        headers: dict[str, str] = {}
        for n, v in fields:
            if not n.startswith(":"):
                headers[n] = f"{headers[n]},{v}" if n in headers else v
        if headers.get("x-stall-backend") == self.name:
            self.seen.append({"method": pseudo[":method"], "path": pseudo[":path"], "headers": headers,
                              "stalled": True, "connection": connection, "protocol": "h2"})
            await asyncio.sleep(STALL)          # its window never given back
            return
        body = bytearray()
        if event.stream_ended is None:
            while (e := await queue.get()) is not None:
                if isinstance(e, h2.events.DataReceived):
                    body += e.data
                    ep.ack(sid, e.flow_controlled_length)
                elif isinstance(e, h2.events.StreamEnded):
                    break
                elif isinstance(e, h2.events.StreamReset):
                    return
            else:
                return
        received = _received(pseudo[":method"], pseudo[":path"], headers, bytes(body), connection, "h2")
        received["authority"] = pseudo.get(":authority", "")
        self.seen.append(received)
        if headers.get("x-delay-ms"):
            await asyncio.sleep(int(headers["x-delay-ms"]) / 1000)
        answer = json.dumps({"backend": self.name, "host": pseudo.get(":authority", ""), **received}).encode()
        ep.headers(sid, [(":status", "200"), ("content-type", "application/json"), ("x-backend", self.name),
                         ("content-length", str(len(answer)))])
        ep.send(sid, answer, end=True)


async def main(args) -> None:
    servers = []
    for spec in args.http:
        name, _, rest = spec.partition("=")
        host, port, *status = rest.split(":")
        backend = HttpBackend(name, int(status[0]) if status else 200)
        servers.append(await asyncio.start_server(backend.serve, host, int(port)))
    for spec in args.h2:
        name, _, rest = spec.partition("=")
        host, port = rest.split(":")
        servers.append(await asyncio.start_server(H2Backend(name).serve, host, int(port)))
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
    parser.add_argument("--h2", action="append", default=[], help="NAME=HOST:PORT")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
