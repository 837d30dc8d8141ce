"""Raw-bytes helpers: frames built by hand (header blocks by python-hyper's hpack),
responses parsed by hyperframe, so what we check does not come from our codec."""
import struct

import hpack
from hyperframe.frame import Frame

from meshcore import H2Connection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def settings(*pairs, ack=False) -> bytes:
    return frame(4, 1 if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def parse_frames(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data):
        f, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
        f.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
        out.append(f)
        pos += 9 + length
    return out


class RawClient:
    """Drives a meshcore server connection with hand-made frames."""

    def __init__(self, **server_kwargs):
        self.server = H2Connection(client=False, **server_kwargs)
        self.enc = hpack.Encoder()
        self.events = self.server.receive_data(PREFACE + settings())
        self.initial = parse_frames(self.server.data_to_send())
        self.server.receive_data(settings(ack=True))
        self.server.data_to_send()

    def block(self, headers) -> bytes:
        return self.enc.encode(headers)

    def connect_headers(self, sid: int, authority: str = "10.0.0.1:80", end_stream=False,
                        extra=()) -> bytes:
        block = self.block([(":method", "CONNECT"), (":authority", authority), *extra])
        return frame(1, 0x4 | (1 if end_stream else 0), sid, block)

    def open(self, sid: int, **kw) -> list:
        return self.send(self.connect_headers(sid, **kw))

    def send(self, data: bytes) -> list:
        self.events = self.server.receive_data(data)
        return self.events

    def output(self) -> list:
        return parse_frames(self.server.data_to_send())

    def goaway(self):
        frames = [f for f in self.output() if f.type == 0x07]
        return frames[-1] if frames else None
