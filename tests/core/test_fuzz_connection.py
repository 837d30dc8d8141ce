"""Hypothesis fuzzing of the connection reader: random frame sequences (valid-looking
and hostile) at both roles. Nothing may raise out of receive_data(), no INTERNAL_ERROR
(our bug) may occur, output stays parseable, and memory stays bounded."""
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from meshcore import H2Connection, events as ev
from meshcore.errors import ErrorCode

from rawpeer import PREFACE, frame, parse_frames, settings as settings_frame

frame_types = st.one_of(st.integers(0, 9), st.integers(10, 255))
stream_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7]), st.integers(0, 2**31 - 1))
flags = st.sampled_from([0, 1, 4, 5, 8, 9, 0x20, 0x24, 0x25, 0x2d, 0xff])


@st.composite
def raw_frames(draw):
    ftype = draw(frame_types)
    if ftype == 4 and draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 2**32 - 1)), max_size=4))
        return settings_frame(*pairs)
    if ftype == 8 and draw(st.booleans()):
        return frame(8, 0, draw(stream_ids), struct.pack(">I", draw(st.integers(0, 2**32 - 1))))
    if ftype == 1 and draw(st.booleans()):
        import hpack
        block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
        return frame(1, draw(flags) | 4, draw(st.sampled_from([1, 3, 5])), block)
    return frame(ftype, draw(flags), draw(stream_ids), draw(st.binary(max_size=64)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(raw_frames(), max_size=25), client=st.booleans(),
       split=st.integers(1, 50))
def test_reader_never_raises_and_never_hits_internal_error(seq, client, split):
    conn = H2Connection(client=client)
    conn.data_to_send()
    wire = (b"" if client else PREFACE) + settings_frame() + b"".join(seq)
    for i in range(0, len(wire), split):
        for e in conn.receive_data(wire[i:i + split]):
            if isinstance(e, ev.ConnectionTerminated) and not e.remote:
                assert e.error_code != ErrorCode.INTERNAL_ERROR, e.reason
    out = conn.data_to_send()
    parse_frames(out)                       # everything we wrote is well-formed
    assert len(out) < 200_000


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), limit=st.sampled_from([100, 4096, 65536]))
def test_hpack_decoder_raises_only_its_own_errors(data, limit):
    from meshcore._core.hpack import HeaderDecoder
    from meshcore.errors import CompressionError, HeaderListTooLarge
    try:
        fields = HeaderDecoder(max_header_list_size=limit).decode(data)
    except (CompressionError, HeaderListTooLarge):
        return
    assert sum(len(n) + len(v) + 32 for n, v in fields) <= limit


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), split=st.integers(1, 40))
def test_frame_decoder_raises_only_protocol_errors(data, split):
    from meshcore._core.frames import FrameDecoder
    from meshcore.errors import ProtocolError
    dec = FrameDecoder()
    try:
        for i in range(0, len(data), split):
            for f in dec.feed(data[i:i + split]):
                assert f.length == len(f.payload)
    except ProtocolError:
        pass
