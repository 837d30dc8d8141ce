"""A raw HTTP/2 peer over real mTLS: hand-made frames on a blocking TLS socket, for
attacks no well-behaved client library would send."""
from __future__ import annotations

import socket
import ssl
import struct

import hpack
from hyperframe.frame import Frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def settings(*pairs, ack: bool = False) -> bytes:
    return frame(4, 1 if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(opaque: bytes = b"12345678", ack: bool = False) -> bytes:
    return frame(6, 1 if ack else 0, 0, opaque)


class RawTlsPeer:
    """Connects with a client certificate, sends the preface and SETTINGS, and then
    whatever the test writes. `rcvbuf` shrinks the receive buffer before connecting,
    for a peer that reads slowly or never."""

    def __init__(self, address, context: ssl.SSLContext, *, rcvbuf: int | None = None, timeout: float = 10):
        raw = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(address)
        self.sock = context.wrap_socket(raw, server_hostname=None)
        self.encoder = hpack.Encoder()
        self.sock.sendall(PREFACE + settings())

    def connect_headers(self, sid: int, authority: str, end_stream: bool = False) -> bytes:
        block = self.encoder.encode([(":method", "CONNECT"), (":authority", authority)])
        return frame(1, 0x4 | (1 if end_stream else 0), sid, block)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames_until_closed(self, limit: float = 10.0) -> list:
        """Every frame the server sends until it closes the connection (or `limit`
        seconds pass), parsed by hyperframe."""
        import time
        data = bytearray()
        deadline = time.monotonic() + limit
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        frames, pos = [], 0
        while pos + 9 <= len(data):
            f, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
            if pos + 9 + length > len(data):
                break
            f.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
            frames.append(f)
            pos += 9 + length
        return frames

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
