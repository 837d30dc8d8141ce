"""The TLS transport's graceful close: close_notify, half-close, the peer's EOF, and its
own deadline for a peer that never gives one."""
import asyncio
import socket
import threading
import time

from meshcore.aio.tls import start_tls
from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER


def test_a_close_a_peer_never_answers_ends_at_the_transport_deadline(run, ca):
    store = CertificateStore(ca)
    listener = socket.create_server(("127.0.0.1", 0))
    stop, held = threading.Event(), []

    def silent_peer():
        # completes the handshake, then neither reads nor closes
        conn, _ = listener.accept()
        held.append(store.server_context(SERVER).wrap_socket(conn, server_side=True))
        stop.wait(20)
    peer = threading.Thread(target=silent_peer, daemon=True)
    peer.start()

    async def scenario():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class Recorder(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        sock = socket.create_connection(listener.getsockname())
        sock.setblocking(False)
        transport, _ = await start_tls(loop, sock, store.client_context(CLIENT), Recorder, server_side=False,
                                       timeout=5)
        transport.close_timeout = 0.3
        started = time.monotonic()
        transport.close()
        assert await asyncio.wait_for(lost, 5) is None
        return time.monotonic() - started
    try:
        took = run(scenario())
    finally:
        stop.set()
        peer.join(5)
        for s in held:
            s.close()
        listener.close()
    assert 0.25 < took < 2, took
