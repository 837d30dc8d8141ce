"""Our frame codec against hyperframe: our frames parsed by theirs, theirs by ours."""
import pytest
from hypothesis import assume, given, settings, strategies as st
from hyperframe import frame as hf

from meshcore._core import frames as mf
from meshcore.errors import FrameSizeError, ProtocolError

sid = st.integers(1, 2**31 - 1)
u31 = st.integers(0, 2**31 - 1)
payload = st.binary(max_size=2000)
pad = st.one_of(st.none(), st.integers(0, 255))
priority = st.one_of(st.none(), st.tuples(u31, st.integers(1, 256), st.booleans()))


def parse_theirs(data: bytes):
    f, length = hf.Frame.parse_frame_header(memoryview(data[:9]))
    assert length == len(data) - 9
    f.parse_body(memoryview(data[9:]))
    return f


def parse_ours(data: bytes, max_frame_size=16384):
    frames = mf.FrameDecoder(max_frame_size).feed(data)
    assert len(frames) == 1
    return frames[0]


@settings(max_examples=200)
@given(s=sid, data=payload, end=st.booleans(), p=pad)
def test_data(s, data, end, p):
    wire = mf.encode_data(s, data, end, pad_length=p)
    theirs = parse_theirs(wire)
    assert isinstance(theirs, hf.DataFrame) and theirs.stream_id == s
    assert theirs.data == data and ("END_STREAM" in theirs.flags) == end
    assert theirs.pad_length == (p or 0)
    f = hf.DataFrame(s, data)
    if end:
        f.flags.add("END_STREAM")
    if p is not None:
        f.flags.add("PADDED")
        f.pad_length = p
    ours = parse_ours(f.serialize())
    assert bytes(ours.data) == data and ours.end_stream == end and ours.stream_id == s


@settings(max_examples=200)
@given(s=sid, block=payload, end=st.booleans(), eh=st.booleans(), p=pad, prio=priority)
def test_headers(s, block, end, eh, p, prio):
    if prio is not None and prio[0] == s:
        prio = (0, prio[1], prio[2])
    # hyperframe refuses padding that fills an empty fragment exactly; RFC 9113 6.2
    # only forbids padding that exceeds it
    assume(block or not p)
    wire = mf.encode_headers(s, block, end, eh, pad_length=p, priority=prio)
    theirs = parse_theirs(wire)
    assert isinstance(theirs, hf.HeadersFrame) and theirs.data == block
    assert ("END_HEADERS" in theirs.flags) == eh and ("END_STREAM" in theirs.flags) == end
    if prio:
        assert (theirs.depends_on, theirs.stream_weight + 1, theirs.exclusive) == prio
    f = hf.HeadersFrame(s, block)
    for flag, on in (("END_STREAM", end), ("END_HEADERS", eh)):
        if on:
            f.flags.add(flag)
    if p is not None:
        f.flags.add("PADDED")
        f.pad_length = p
    if prio:
        f.flags.add("PRIORITY")
        f.depends_on, f.stream_weight, f.exclusive = prio[0], prio[1] - 1, prio[2]
    ours = parse_ours(f.serialize())
    assert bytes(ours.header_block) == block and ours.priority == prio
    assert ours.end_headers == eh and ours.end_stream == end


@given(s=sid, dep=u31, w=st.integers(1, 256), ex=st.booleans())
def test_priority(s, dep, w, ex):
    if dep == s:
        dep = 0
    theirs = parse_theirs(mf.encode_priority(s, dep, w, ex))
    assert (theirs.depends_on, theirs.stream_weight + 1, theirs.exclusive) == (dep, w, ex)
    f = hf.PriorityFrame(s, depends_on=dep, stream_weight=w - 1, exclusive=ex)
    assert parse_ours(f.serialize()).priority == (dep, w, ex)


@given(s=sid, code=st.integers(0, 2**32 - 1))
def test_rst_stream(s, code):
    assert parse_theirs(mf.encode_rst_stream(s, code)).error_code == code
    assert parse_ours(hf.RstStreamFrame(s, code).serialize()).error_code == code


@given(pairs=st.lists(st.tuples(st.integers(0, 0xffff), st.integers(0, 2**32 - 1)), max_size=10),
       ack=st.booleans())
def test_settings(pairs, ack):
    if ack:
        pairs = []
    theirs = parse_theirs(mf.encode_settings(pairs, ack))
    assert theirs.settings == dict(pairs) and ("ACK" in theirs.flags) == ack
    # hyperframe's serializer keeps only the low 8 bits of an identifier, so the
    # reverse direction is checked on the identifiers it can write
    pairs = [(k & 0xff, v) for k, v in pairs]
    f = hf.SettingsFrame(0, dict(pairs))
    if ack:
        f.flags.add("ACK")
    ours = parse_ours(f.serialize())
    assert dict(ours.settings) == dict(pairs) and ours.ack == ack


@given(s=sid, promised=st.integers(1, 2**30 - 1).map(lambda x: 2 * x), block=payload, p=pad)
def test_push_promise(s, promised, block, p):
    theirs = parse_theirs(mf.encode_push_promise(s, promised, block, pad_length=p))
    assert theirs.promised_stream_id == promised and theirs.data == block
    f = hf.PushPromiseFrame(s, promised_stream_id=promised, data=block)
    f.flags.add("END_HEADERS")
    ours = parse_ours(f.serialize())
    assert ours.promised_stream_id == promised and bytes(ours.header_block) == block


@given(opaque=st.binary(min_size=8, max_size=8), ack=st.booleans())
def test_ping(opaque, ack):
    theirs = parse_theirs(mf.encode_ping(opaque, ack))
    assert theirs.opaque_data == opaque and ("ACK" in theirs.flags) == ack
    f = hf.PingFrame(0, opaque)
    if ack:
        f.flags.add("ACK")
    ours = parse_ours(f.serialize())
    assert ours.opaque_data == opaque and ours.ack == ack


@given(last=u31, code=st.integers(0, 2**32 - 1), extra=payload)
def test_goaway(last, code, extra):
    theirs = parse_theirs(mf.encode_goaway(last, code, extra))
    assert (theirs.last_stream_id, theirs.error_code, theirs.additional_data) == (last, code, extra)
    ours = parse_ours(hf.GoAwayFrame(0, last, code, extra).serialize())
    assert (ours.last_stream_id, ours.error_code, ours.additional_data) == (last, code, extra)


@given(s=st.integers(0, 2**31 - 1), inc=st.integers(1, 2**31 - 1))
def test_window_update(s, inc):
    assert parse_theirs(mf.encode_window_update(s, inc)).window_increment == inc
    assert parse_ours(hf.WindowUpdateFrame(s, inc).serialize()).window_increment == inc


@given(s=sid, block=payload, eh=st.booleans())
def test_continuation(s, block, eh):
    theirs = parse_theirs(mf.encode_continuation(s, block, eh))
    assert theirs.data == block and ("END_HEADERS" in theirs.flags) == eh
    f = hf.ContinuationFrame(s, block)
    if eh:
        f.flags.add("END_HEADERS")
    ours = parse_ours(f.serialize())
    assert bytes(ours.header_block) == block and ours.end_headers == eh


@settings(max_examples=50)
@given(data=st.binary(min_size=1, max_size=3000), cuts=st.lists(st.integers(0, 3100), max_size=8))
def test_decoder_reassembles_any_split(data, cuts):
    wire = mf.encode_data(1, data) + mf.encode_ping(b"abcdefgh") + mf.encode_data(3, data, True)
    dec = mf.FrameDecoder()
    frames = []
    last = 0
    for cut in sorted(c for c in cuts if c < len(wire)) + [len(wire)]:
        frames += dec.feed(wire[last:cut])
        last = cut
    assert [f.type_name for f in frames] == ["DATA", "PING", "DATA"]
    assert bytes(frames[0].data) == data and bytes(frames[2].data) == data


def test_unknown_frame_types_are_passed_through():
    f = parse_ours(mf.encode_frame(0xfa, 0x3, 5, b"hello"))
    assert f.type == 0xfa and bytes(f.payload) == b"hello" and f.type_name.startswith("unknown")


def test_large_frame_needs_the_negotiated_size():
    wire = mf.encode_data(1, b"x" * (1 << 20))
    with pytest.raises(FrameSizeError):
        mf.FrameDecoder().feed(wire)
    assert len(parse_ours(wire, 1 << 20).data) == 1 << 20


@pytest.mark.parametrize("wire,error", [
    (mf.encode_frame(0, 0x8, 1, b""), FrameSizeError),
    (mf.encode_frame(0, 0x8, 1, b"\x05abc"), ProtocolError),
    (mf.encode_frame(2, 0, 1, b"\0" * 6), FrameSizeError),
    (mf.encode_frame(6, 0, 0, b"\0" * 9), FrameSizeError),
    (mf.encode_frame(4, 0, 3, b""), ProtocolError),
    (mf.encode_frame(8, 0, 0, b"\0" * 5), FrameSizeError),
    (mf.encode_frame(7, 0, 0, b"\0" * 4), FrameSizeError),
    (mf.encode_frame(0, 0, 0, b"x"), ProtocolError),
])
def test_malformed_frames(wire, error):
    with pytest.raises(error):
        mf.FrameDecoder().feed(wire)
