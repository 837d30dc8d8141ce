"""The attacks of the README's security table driven as raw frames at the real listener, over real mTLS.

Each row asserts the stated answer (the GOAWAY or RST_STREAM code RFC 9113 or the
CVE's mitigation prescribes), bounded file descriptors, and that an honest tunnel
on another connection of the same server keeps its bytes intact."""
import asyncio
import hashlib
import os
import struct

import pytest

from meshcore.errors import ErrorCode as E
from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER, exchange, port_of, relay_setup, wait_until
from rawtls import RawTlsPeer, frame, ping


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def rapid_reset(peer, target):
    return b"".join(peer.connect_headers(1 + 2 * i, target) + frame(3, 0, 1 + 2 * i, u32(E.CANCEL))
                    for i in range(21))


def made_you_reset(peer, target):
    # WINDOW_UPDATE of 0 on a stream is a stream error we must answer with a reset
    return b"".join(peer.connect_headers(1 + 2 * i, target) + frame(8, 0, 1 + 2 * i, u32(0))
                    for i in range(1025))


def continuation_flood(peer, target):
    block = peer.encoder.encode([(":method", "CONNECT"), (":authority", target)])
    return frame(1, 0, 1, block[:1]) + b"".join(frame(9, 0, 1, b"\x00") for _ in range(9))


def header_block_too_large(peer, target):
    return frame(1, 0, 1, b"\x00" * 40000) + frame(9, 0, 1, b"\x00" * 30000)


def hpack_bomb(peer, target):
    block = peer.encoder.encode([(":method", "CONNECT"), (":authority", target), ("x-big", "v" * 4000)])
    return frame(1, 0x4, 1, block) + frame(1, 0x4, 3, b"\xbe" * 5000)   # index 62: the 4 KB entry


def empty_frames(peer, target):
    return peer.connect_headers(1, target) + frame(0, 0, 1) + frame(0, 0, 1)


def window_overflow(peer, target):
    return frame(8, 0, 0, u32(0x7FFFFFFF))


def frame_too_large(peer, target):
    return peer.connect_headers(1, target) + struct.pack(">I", (1 << 20) + 1)[1:] + b"\x00\x00" + u32(1)


def push_promise(peer, target):
    return frame(5, 0x4, 1, u32(2))


@pytest.mark.parametrize("attack, code", [
    (rapid_reset, E.ENHANCE_YOUR_CALM),          # CVE-2023-44487
    (made_you_reset, E.ENHANCE_YOUR_CALM),       # CVE-2025-8671
    (continuation_flood, E.ENHANCE_YOUR_CALM),   # CVE-2024-27316
    (header_block_too_large, E.ENHANCE_YOUR_CALM),
    (hpack_bomb, E.ENHANCE_YOUR_CALM),           # CVE-2016-6581
    (empty_frames, E.ENHANCE_YOUR_CALM),         # CVE-2019-9518
    (window_overflow, E.FLOW_CONTROL_ERROR),     # RFC 9113 6.9.1
    (frame_too_large, E.FRAME_SIZE_ERROR),       # RFC 9113 4.2
    (push_promise, E.PROTOCOL_ERROR),            # RFC 9113 8.4: a client cannot push
], ids=lambda v: getattr(v, "__name__", None) or getattr(v, "name", str(v)))
def test_attack_gets_goaway_and_the_honest_tunnel_is_untouched(run, ca, attack, code):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            target = f"127.0.0.1:{port_of(echo)}"
            honest = await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address)
            fds = len(os.listdir("/proc/self/fd"))
            ctx = CertificateStore(ca).client_context(CLIENT)

            def attack_and_read():
                peer = RawTlsPeer(server.address, ctx)
                try:
                    peer.send(attack(peer, target))
                except OSError:
                    pass                          # the server may cut us off mid-send
                frames = peer.frames_until_closed()
                peer.close()
                return frames
            frames = await asyncio.get_running_loop().run_in_executor(None, attack_and_read)
            goaways = [f for f in frames if f.type == 0x07]
            assert [g.error_code for g in goaways] == [code], [type(f).__name__ for f in frames]
            await wait_until(lambda: len(server.connections) == 1, 5)
            assert len(server.connections) == 1           # the attacker's connection is gone
            await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds, 5)
            assert len(os.listdir("/proc/self/fd")) <= fds
            payload = os.urandom(300_000)
            assert await exchange(*honest, payload) == (len(payload), hashlib.sha256(payload).hexdigest())
    run(scenario())


def test_too_many_streams_are_refused_one_by_one(run, ca):
    """RFC 9113 5.1.2: a stream over the advertised 200 is refused (REFUSED_STREAM);
    the connection and its 200 open tunnels carry on."""
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            target = f"127.0.0.1:{port_of(echo)}"
            ctx = CertificateStore(ca).client_context(CLIENT)

            def attack_and_read():
                peer = RawTlsPeer(server.address, ctx)
                peer.send(b"".join(peer.connect_headers(1 + 2 * i, target) for i in range(201)))
                peer.send(ping())                 # answered: the connection is still up
                import time
                time.sleep(1.0)
                peer.sock.settimeout(1.0)
                frames = peer.frames_until_closed(limit=2.0)
                peer.close()
                return frames
            frames = await asyncio.get_running_loop().run_in_executor(None, attack_and_read)
            resets = [(f.stream_id, f.error_code) for f in frames if f.type == 0x03]
            assert resets == [(401, E.REFUSED_STREAM)]
            assert not [f for f in frames if f.type == 0x07]
            assert [f for f in frames if f.type == 0x06 and "ACK" in f.flags]
            statuses = [f for f in frames if f.type == 0x01]
            assert len(statuses) == 200                   # every stream within the limit answered
    run(scenario())


def test_unknown_frame_types_are_ignored(run, ca):
    """RFC 9113 4.1: unknown types are skipped (never buffered), the connection goes on."""
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            ctx = CertificateStore(ca).client_context(CLIENT)

            def send_and_read():
                peer = RawTlsPeer(server.address, ctx)
                peer.send(frame(0xEE, 0, 0, b"\x00" * 100_000) + frame(0xEF, 0xFF, 7, b"x") + ping())
                peer.send(frame(7, 0, 0, u32(0) + u32(E.NO_ERROR)))    # our GOAWAY: the server closes
                frames = peer.frames_until_closed(limit=5.0)
                peer.close()
                return frames
            frames = await asyncio.get_running_loop().run_in_executor(None, send_and_read)
            assert [f for f in frames if f.type == 0x06 and "ACK" in f.flags]
            assert not [f for f in frames if f.type == 0x07 and f.error_code != E.NO_ERROR]
    run(scenario())
