"""A workload for local meshes (`meshcore demo`, tests): an HTTP service that says who
it is and where the request came from, and a TCP echo port.

    python -m meshcore.localworkload --name web --http 127.0.0.1:8080 --echo 127.0.0.1:9000
"""
from __future__ import annotations

import argparse
import asyncio
import signal


async def _http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        peer = writer.get_extra_info("peername")
        body = f"hello from {name}: {line} from {peer[0]}:{peer[1]}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


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
    if args.http:
        servers.append(await asyncio.start_server(lambda r, w: _http(args.name, r, w), *_address(args.http)))
    if args.echo:
        servers.append(await asyncio.start_server(echo, *_address(args.echo)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m meshcore.localworkload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="workload", help="name it answers with")
    parser.add_argument("--http", metavar="HOST:PORT", help="serve HTTP/1.1 here")
    parser.add_argument("--echo", metavar="HOST:PORT", help="echo TCP here")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
