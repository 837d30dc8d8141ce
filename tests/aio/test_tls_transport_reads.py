"""TlsTransport's reads over meshcore's TLS engine, both ends on loopback: records that
OpenSSL read ahead while the protocol was paused arrive without a readiness event
(pause and resume at every buffer), and the two ends of a stream the protocol sees
(close_notify, a FIN without it)."""
import asyncio
import socket

from meshcore.aio.tls import start_tls
from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER, wait_until


class Reader(asyncio.BufferedProtocol):
    """Reads through a tiny buffer; paused from the start, and after every buffer
    until the loop's next turn."""

    def __init__(self, size: int, pause_each: bool):
        self.buf = bytearray(size)
        self.got = bytearray()
        self.pause_each = pause_each
        self.eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        if self.pause_each:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)

    def eof_received(self):
        self.eof.set_result(bytes(self.got))
        return False

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def tls_pair(ca, client_protocol):
    """(client transport, client protocol, server transport) over loopback."""
    store = CertificateStore(ca)
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    try:
        (server_sock, _), _ = await asyncio.gather(loop.sock_accept(listener),
                                                   loop.sock_connect(client, listener.getsockname()))
    finally:
        listener.close()
    server_sock.setblocking(False)
    (ct, cp), (st, _) = await asyncio.gather(
        start_tls(loop, client, store.client_context(CLIENT), client_protocol, server_side=False, timeout=5),
        start_tls(loop, server_sock, store.server_context(SERVER), asyncio.BufferedProtocol, server_side=True,
                  timeout=5))
    return ct, cp, st


def test_records_read_ahead_while_paused_all_arrive(run, ca):
    async def scenario():
        ct, reader, st = await tls_pair(ca, lambda: Reader(100, pause_each=True))
        sent = b"".join(bytes([i % 251]) * 50 for i in range(400))
        for i in range(400):                    # one record each, piling up unread
            st.write(sent[i * 50:(i + 1) * 50])
        await asyncio.sleep(0.05)
        ct.resume_reading()
        # all of it, with nothing more coming on the socket to wake the reader
        await wait_until(lambda: len(reader.got) == len(sent), 5)
        assert reader.got == sent
        st.close()                              # close_notify after the data
        assert await asyncio.wait_for(reader.eof, 5) == sent
        assert await asyncio.wait_for(reader.lost, 5) is None
        return True
    assert run(scenario())


def test_a_fin_without_close_notify_reads_as_the_end(run, ca):
    async def scenario():
        ct, reader, st = await tls_pair(ca, lambda: Reader(1 << 16, pause_each=False))
        st.write(b"partial answer")
        await asyncio.sleep(0.05)
        st.get_extra_info("socket").shutdown(socket.SHUT_WR)     # TCP's end, no TLS end
        ct.resume_reading()
        got = await asyncio.wait_for(reader.eof, 5)
        assert await asyncio.wait_for(reader.lost, 5) is None
        st.abort()
        return got
    assert run(scenario()) == b"partial answer"


def test_a_large_write_arrives_whole_through_a_small_reader(run, ca):
    async def scenario():
        ct, reader, st = await tls_pair(ca, lambda: Reader(4096, pause_each=False))
        data = bytes(range(256)) * 8192                  # 2 MiB: more than the socket holds
        st.writelines([data[:10], data[10:100_000], data[100_000:]])
        ct.resume_reading()
        st.close()
        got = await asyncio.wait_for(reader.eof, 10)
        return got == data
    assert run(scenario())
