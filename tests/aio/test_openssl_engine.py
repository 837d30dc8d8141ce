"""meshcore's TLS engine (meshcore.aio.openssl) on a socketpair, against Python's ssl
driven through memory BIOs: the test decides exactly which bytes of the peer's TLS
stream are in the socket when the engine reads. Records split at every byte, many
records in one recv(), close_notify against a bare FIN, garbage and truncated
records, memory of connections gone idle, and random chunkings (hypothesis)."""
from __future__ import annotations

import ctypes
import gc
import os
import select
import socket
import ssl

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.aio.openssl import HANDSHAKE_DONE, TlsConnection
from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER


class Pair:
    """The engine (client side) on one end of a socketpair; Python's ssl (server
    side, memory BIOs) behind the other end."""

    def __init__(self, store: CertificateStore, server_context=None, client_context=None):
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        context = client_context or store.client_context(CLIENT)
        self.tls = TlsConnection(context.native(), self.ours.fileno(), False)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.peer = (server_context or store.server_context(SERVER)).wrap_bio(self.incoming, self.outgoing,
                                                                              server_side=True)
        ours_done = theirs_done = False
        for _ in range(50):
            if not ours_done:
                ours_done = self.tls.handshake() == HANDSHAKE_DONE
            self._to_peer()
            if not theirs_done:
                try:
                    self.peer.do_handshake()
                    theirs_done = True
                except ssl.SSLWantReadError:
                    pass
            self.send_raw(self.outgoing.read())
            if ours_done and theirs_done:
                break
        assert ours_done and theirs_done

    def _to_peer(self) -> None:
        while True:
            try:
                data = self.theirs.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            self.incoming.write(data)

    def records(self, *payloads: bytes) -> bytes:
        """The peer's TLS stream for `payloads`, one record (at least) each."""
        for p in payloads:
            self.peer.write(p)
        return self.outgoing.read()

    def send_raw(self, data: bytes) -> None:
        if data:
            self.theirs.sendall(data)

    def read(self, size: int = 1 << 20) -> bytes:
        buf = bytearray(size)
        got = self.tls.read_into(buf)
        return bytes(buf[:got])

    def peer_reads(self) -> bytes:
        self._to_peer()
        out = b""
        while True:
            try:
                out += self.peer.read(1 << 16)
            except ssl.SSLWantReadError:
                return out

    def close(self) -> None:
        self.tls.free()
        self.ours.close()
        self.theirs.close()


@pytest.fixture(scope="module")
def store(ca):
    return CertificateStore(ca)


@pytest.fixture
def pair(store):
    p = Pair(store)
    yield p
    p.close()


def test_records_split_at_every_byte(pair):
    first, second = b"hello world " * 30, b"x" * 50
    stream = pair.records(first, second)
    length = len(stream)
    pair.send_raw(stream)
    assert pair.read() == first + second
    for cut in range(1, length):
        stream = pair.records(first, second)
        assert len(stream) == length
        pair.send_raw(stream[:cut])
        got = pair.read()
        assert not pair.tls.eof
        pair.send_raw(stream[cut:])
        got += pair.read()
        assert got == first + second, cut
    assert not pair.tls.has_pending()


def test_many_records_in_one_read(pair):
    payloads = [bytes([i]) * 1000 for i in range(64)]
    pair.send_raw(pair.records(*payloads))
    assert pair.read() == b"".join(payloads)        # every record of the recv, in one call
    assert not pair.tls.has_pending()


def test_read_ahead_holds_what_the_socket_no_longer_shows(pair):
    payloads = [bytes([i]) * 1000 for i in range(40)]
    pair.send_raw(pair.records(*payloads))
    got = pair.read(1000)
    # one recv() took the records the buffer could not: the socket is empty, and only
    # has_pending() tells that more is there (the transport reads again at once then)
    assert got == payloads[0]
    assert select.select([pair.ours], [], [], 0)[0] == []
    assert pair.tls.has_pending()
    while len(got) < 40 * 1000:
        piece = pair.read(4096)
        assert piece
        got += piece
    assert got == b"".join(payloads)


def test_an_undrained_small_read_stops_when_openssl_holds_nothing_more(pair):
    """drain=False (the transport's reads): records OpenSSL holds are all read, but
    after a small read that leaves it holding nothing the socket is not read again
    to find it empty; what comes next (here the peer's FIN) is for the next read,
    which the socket's readiness announces. A large read goes on to the socket's
    end, as a drained one does."""
    payloads = [bytes([i]) * 1000 for i in range(120)]    # more than one recv() takes
    pair.send_raw(pair.records(*payloads))
    buf = bytearray(1 << 20)
    assert bytes(buf[:pair.tls.read_into(buf, False)]) == b"".join(payloads)
    pair.send_raw(pair.records(b"first", b"second"))
    got = pair.tls.read_into(buf, False)
    assert bytes(buf[:got]) == b"firstsecond" and not pair.tls.has_pending()
    pair.send_raw(pair.records(b"last"))
    pair.theirs.shutdown(socket.SHUT_WR)
    got = pair.tls.read_into(buf, False)
    assert bytes(buf[:got]) == b"last" and not pair.tls.eof
    assert select.select([pair.ours], [], [], 0)[0] == [pair.ours]
    assert pair.tls.read_into(buf, False) == 0 and pair.tls.eof


def test_close_notify_is_the_end(pair):
    stream = pair.records(b"last words")
    try:
        pair.peer.unwrap()
    except ssl.SSLWantReadError:
        pass                                         # ours is sent; theirs has not come
    pair.send_raw(stream + pair.outgoing.read())
    assert pair.read() == b"last words"
    assert pair.tls.eof and pair.tls.peer_closed
    assert pair.tls.shutdown() is True               # both sides have ended: nothing to wait for
    with pytest.raises(ssl.SSLZeroReturnError):      # the peer has our close_notify
        pair.peer_reads()


def test_a_fin_without_close_notify_is_the_end_too(pair):
    pair.send_raw(pair.records(b"abrupt"))
    pair.theirs.shutdown(socket.SHUT_WR)
    assert pair.read() == b"abrupt"
    assert pair.tls.eof and not pair.tls.peer_closed
    assert pair.read() == b""                        # and stays the end


def test_a_truncated_record_then_fin_ends_after_the_whole_records(pair):
    stream = pair.records(b"whole", b"cut short")
    pair.send_raw(stream[:-5])
    pair.theirs.shutdown(socket.SHUT_WR)
    assert pair.read() == b"whole"
    assert pair.tls.eof


@pytest.mark.parametrize("garbage", [
    b"\x17\x03\x03\x00\x20" + os.urandom(32),        # an application record that does not decrypt
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",            # not TLS at all
    b"\x17\x03\x03\xff\xff" + b"\0" * 100,           # a record longer than TLS allows
], ids=["bad-mac", "plaintext", "oversized"])
def test_garbage_is_a_clear_error(pair, garbage):
    pair.send_raw(pair.records(b"fine") + garbage)
    # what decrypted before the garbage comes out first (a peer's last frames before
    # its connection broke); the read after it raises
    assert pair.read() == b"fine"
    with pytest.raises(ssl.SSLError) as err:
        while True:
            pair.read()
    assert err.value.reason and err.value.library == "SSL", err.value
    assert pair.tls.shutdown() is False              # no close_notify after a failure


def test_writes_reach_the_peer_in_order(pair):
    data = os.urandom(300_000)
    sent = 0
    received = b""
    while sent < len(data) or pair.tls.unsent:
        if sent < len(data):
            sent += pair.tls.write(memoryview(data)[sent:sent + 70_000])
        else:
            pair.tls.flush()
        received += pair.peer_reads()
    received += pair.peer_reads()
    assert received == data


def test_small_writes_leave_in_one_send(pair):
    """more=True keeps the records for the write that follows: one send() for all."""
    for piece in (b"a" * 10, b"b" * 20, b"c" * 30):
        assert pair.tls.write(piece, True) == len(piece)
    assert pair.tls.unsent > 0
    assert select.select([pair.theirs], [], [], 0)[0] == []     # nothing sent yet
    assert pair.tls.write(b"d" * 40) == 40
    assert pair.tls.unsent == 0
    assert pair.peer_reads() == b"a" * 10 + b"b" * 20 + b"c" * 30 + b"d" * 40


def test_accessors_after_the_handshake(pair):
    assert pair.tls.selected_alpn_protocol() == "h2"
    assert pair.tls.version() == "TLSv1.3"
    name, version, bits = pair.tls.cipher()
    assert name in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384") and version == "TLSv1.3" and bits >= 128
    sans = dict(pair.tls.getpeercert())["subjectAltName"]
    assert ("URI", str(SERVER)) in sans
    cert = x509.load_der_x509_certificate(pair.tls.getpeercert(binary_form=True))
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert str(SERVER) in uris.get_values_for_type(x509.UniformResourceIdentifier)
    pair.tls.free()
    assert pair.tls.getpeercert() is None and pair.tls.cipher() is None


def _heap_in_use() -> int:
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _engine_pair(store):
    """Both ends on the engine (Python's ssl keeps its buffers, and would be measured
    too): (client, server, sockets)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client = TlsConnection(store.client_context(CLIENT).native(), a.fileno(), False)
    server = TlsConnection(store.server_context(SERVER).native(), b.fileno(), True)
    done = [False, False]
    for _ in range(50):
        for i, side in enumerate((client, server)):
            if not done[i]:
                done[i] = side.handshake() == HANDSHAKE_DONE
        if all(done):
            return client, server, (a, b)
    raise AssertionError("no handshake")


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc's mallinfo2")
def test_an_idle_connection_holds_no_record_buffers(store):
    """A connection gone idle after carrying 256 KiB each way holds OpenSSL's state
    only (~26 KiB: keys, the peer's certificate), none of its record buffers (a
    read-ahead buffer of five records and a write buffer would add ~100 KiB)."""
    warm = _engine_pair(store)                  # the contexts are built once, outside the count
    buf = bytearray(1 << 16)
    gc.collect()
    before = _heap_in_use()
    pairs = [_engine_pair(store) for _ in range(16)]
    try:
        chunk = os.urandom(16_000)
        for client, server, _ in pairs:
            for _ in range(16):
                for sender, receiver in ((client, server), (server, client)):
                    assert sender.write(chunk) == len(chunk)
                    assert receiver.read_into(buf) == len(chunk)
        gc.collect()
        per_connection = (_heap_in_use() - before) / (2 * len(pairs))
        assert per_connection < 40 * 1024, per_connection
    finally:
        for client, server, socks in pairs + [warm]:
            client.free()
            server.free()
            for s in socks:
                s.close()


@pytest.fixture(scope="module")
def long_pair(store):
    p = Pair(store)
    yield p
    p.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 20_000), min_size=1, max_size=8),
       cuts=st.lists(st.floats(0, 1), max_size=12),
       reads=st.lists(st.integers(1, 70_000), min_size=1, max_size=5))
def test_any_chunking_of_the_stream_reads_the_same(long_pair, sizes, cuts, reads):
    p = long_pair
    payloads = [os.urandom(n) for n in sizes]
    stream = p.records(*payloads)
    points = sorted({int(c * len(stream)) for c in cuts} | {0, len(stream)})
    got = bytearray()
    turn = 0

    def drain():
        nonlocal turn
        while True:
            size = reads[turn % len(reads)]
            turn += 1
            piece = p.read(size)
            got.extend(piece)
            if len(piece) < size:           # drained: the rest, if any, is a partial record
                return
    for start, end in zip(points, points[1:]):
        view = memoryview(stream)[start:end]
        while view:
            try:
                view = view[p.theirs.send(view):]
            except BlockingIOError:
                pass
            drain()
    drain()
    assert bytes(got) == b"".join(payloads)
    assert not p.tls.eof


def test_a_certificate_that_did_not_verify_is_no_identity(store):
    # a client context whose verification was turned off completes the handshake with
    # a server of another CA: its certificate is not taken for an identity (Python's
    # ssl answers none then too), so verify_server() refuses it
    from meshcore.identity import CertificateAuthority
    from meshcore.identity.tls import verify_server
    from meshcore.errors import IdentityError
    context = store.client_context(CLIENT)
    context.verify_mode = ssl.CERT_NONE
    server = CertificateStore(CertificateAuthority.create("cluster.local")).server_context(SERVER)
    server.verify_mode = ssl.CERT_NONE
    pair = Pair(store, server, context)
    try:
        assert pair.tls.getpeercert() is None and pair.tls.getpeercert(binary_form=True) is None
        with pytest.raises(IdentityError):
            verify_server(pair.tls, [SERVER])
    finally:
        pair.close()
