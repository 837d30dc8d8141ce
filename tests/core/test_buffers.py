"""ReadBuffer and the zero-copy rules: what is copied, what is shared, and that a
buffer still referenced anywhere is never read into again."""
import hyperframe.frame as hf
import pytest

from meshcore import events as ev
from meshcore._core.buffers import SPARE_BUFFERS, ZERO_COPY_MIN_BYTES, ReadBuffer, thread_read_buffer

from test_connection_api import pair, tunnel

BIG = ZERO_COPY_MIN_BYTES


def read_into(buf: ReadBuffer, data: bytes) -> None:
    """What an event loop does: get_buffer(), write into it, drop the view."""
    view = buf.get_buffer(-1)
    view[:len(data)] = data
    view.release()


def test_small_reads_are_copied_and_the_buffer_is_reused():
    buf = ReadBuffer(1024)
    read_into(buf, b"hello")
    kept = buf.take(5)
    assert type(kept) is bytes and kept == b"hello"
    read_into(buf, b"HELLO")
    assert kept == b"hello" and buf.replaced == 0


def test_a_large_read_is_shared_and_a_kept_view_pins_its_buffer():
    buf = ReadBuffer(4 * BIG)
    read_into(buf, b"a" * BIG)
    kept = buf.take(BIG)
    assert type(kept) is memoryview and len(kept) == BIG
    read_into(buf, b"b" * BIG)              # must not land under `kept`
    assert bytes(kept) == b"a" * BIG and buf.replaced == 1
    del kept
    read_into(buf, b"c" * BIG)              # nothing references the new one: reused
    assert buf.replaced == 1 and bytes(buf.take(BIG)) == b"c" * BIG


def test_a_released_buffer_is_reused_instead_of_allocating():
    buf = ReadBuffer(4 * BIG)
    read_into(buf, b"1" * BIG)
    first = buf.take(BIG)                   # pins buffer 1
    read_into(buf, b"2" * BIG)
    second = buf.take(BIG)                  # pins buffer 2
    assert buf.replaced == 1
    del first
    read_into(buf, b"3" * BIG)              # buffer 1 is free again: no allocation
    assert (buf.replaced, buf.reused) == (1, 1)
    assert bytes(second) == b"2" * BIG and bytes(buf.take(BIG)) == b"3" * BIG


def test_spares_are_bounded():
    """Pinned buffers beyond SPARE_BUFFERS are forgotten (freed with their views)."""
    buf = ReadBuffer(BIG)
    n = SPARE_BUFFERS + 5
    kept = []
    for i in range(n):
        read_into(buf, bytes([i]) * BIG)
        kept.append(buf.take(BIG))
    assert buf.replaced == n - 1
    assert [bytes(k[:1]) for k in kept] == [bytes([i]) for i in range(n)]
    kept.clear()
    for i in range(n):
        read_into(buf, b"z" * BIG)
        kept.append(buf.take(BIG))
    assert buf.reused == SPARE_BUFFERS      # the rest had to be allocated again
    assert buf.replaced == (n - 1) + (n - 1 - SPARE_BUFFERS)


def test_views_of_views_pin_too():
    buf = ReadBuffer(4 * BIG)
    read_into(buf, b"x" * BIG)
    inner = memoryview(buf.filled(BIG))[10:20]
    read_into(buf, b"y" * BIG)
    assert bytes(inner) == b"x" * 10 and buf.replaced == 1


@pytest.mark.parametrize("n", [-1, 1025])
def test_reads_outside_the_buffer_are_refused(n):
    buf = ReadBuffer(1024)
    with pytest.raises(ValueError, match="1024-byte buffer"):
        buf.take(n)
    with pytest.raises(ValueError):
        buf.filled(n)


def test_one_shared_buffer_per_thread():
    import threading
    here = thread_read_buffer()
    assert thread_read_buffer() is here
    other = []
    t = threading.Thread(target=lambda: other.append(thread_read_buffer()))
    t.start()
    t.join()
    assert other[0] is not here


def test_core_parses_a_reused_buffer_in_place():
    """DATA read from a reused buffer: small chunks arrive as bytes (the buffer may be
    overwritten at once), large chunks as views that keep the buffer pinned."""
    c, s = pair()
    sid = tunnel(c, s)
    buf = ReadBuffer(4 * BIG)
    for payload in (b"s" * 100, b"L" * (BIG + 1)):
        c.send_data(sid, payload)
        wire = c.data_to_send()
        read_into(buf, wire)
        events = s.receive_data(buf.filled(len(wire)))
        data = [e.data for e in events if isinstance(e, ev.DataReceived)]
        assert b"".join(bytes(d) for d in data) == payload
        read_into(buf, b"\0" * len(wire))    # the loop's next read
        assert b"".join(bytes(d) for d in data) == payload
        assert all(type(d) is (bytes if len(d) < BIG else memoryview) for d in data)


def test_core_parses_the_first_bytes_of_a_buffer_in_place():
    """receive_data(buffer, n), what a connection's read does: the reused buffer
    itself and the read's length, no view per read. What lies past the read is
    never parsed; small chunks are copied and large ones pin the buffer as before."""
    c, s = pair()
    sid = tunnel(c, s)
    buf = ReadBuffer(4 * BIG)
    for payload in (b"s" * 100, b"L" * (BIG + 1)):
        c.send_data(sid, payload)
        wire = c.data_to_send()
        view = buf.get_buffer(-1)
        raw = view.obj
        view[:len(wire)] = wire
        view[len(wire):len(wire) + 9] = b"\xff" * 9    # an oversized frame's header, were it read
        view.release()
        events = s.receive_data(raw, len(wire))
        assert not any(isinstance(e, ev.ConnectionTerminated) for e in events)
        data = [e.data for e in events if isinstance(e, ev.DataReceived)]
        read_into(buf, b"\0" * len(wire))    # the loop's next read
        assert b"".join(bytes(d) for d in data) == payload
        assert all(type(d) is (bytes if len(d) < BIG else memoryview) for d in data)
    with pytest.raises(ValueError):
        s.receive_data(bytearray(10), 11)


def test_large_payloads_are_sent_without_a_copy():
    """send_data() keeps a large payload as given and data_to_send_chunks() passes it
    on for writelines(); small frames around it are joined; the bytes on the wire are
    what hyperframe reads."""
    c, s = pair()
    sid = tunnel(c, s)
    big = bytearray(b"B" * (BIG * 2))
    c.send_data(sid, b"small")
    c.send_data(sid, memoryview(big))
    c.send_data(sid, b"tail", end_stream=True)
    chunks = c.data_to_send_chunks()
    assert len(chunks) == 3                           # [headers+small+header][big][header+tail]
    assert isinstance(chunks[1], memoryview) and chunks[1].obj is big
    wire = b"".join(bytes(x) for x in chunks)
    frames, pos = [], 0
    while pos < len(wire):
        f, length = hf.Frame.parse_frame_header(memoryview(wire[pos:pos + 9]))
        f.parse_body(memoryview(wire[pos + 9:pos + 9 + length]))
        frames.append(f)
        pos += 9 + length
    assert [bytes(f.data) for f in frames] == [b"small", bytes(big), b"tail"]
    assert "END_STREAM" in frames[-1].flags
    got = b"".join(bytes(e.data) for e in s.receive_data(wire) if isinstance(e, ev.DataReceived))
    assert got == b"small" + bytes(big) + b"tail"
    assert c.data_to_send_chunks() == []


def test_small_views_are_copied_when_sent():
    c, s = pair()
    sid = tunnel(c, s)
    mutable = bytearray(b"before")
    c.send_data(sid, memoryview(mutable))
    mutable[:] = b"AFTER!"                            # the caller reuses its buffer at once
    got = b"".join(bytes(e.data) for e in s.receive_data(c.data_to_send())
                   if isinstance(e, ev.DataReceived))
    assert got == b"before"
