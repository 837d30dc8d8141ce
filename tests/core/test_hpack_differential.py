"""HPACK and Huffman against python-hyper's hpack, plus RFC 7541 Appendix C vectors."""
import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings, strategies as st

from meshcore._core import huffman
from meshcore._core.hpack import STATIC_TABLE, HeaderDecoder, HeaderEncoder
from meshcore.errors import CompressionError, HeaderListTooLarge

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.one_of(token, st.sampled_from([":authority", ":method", "forwarded", "baggage",
                                          "content-type", "user-agent", "authorization"])
                  ).map(str.encode)
values = st.one_of(st.binary(max_size=60),
                   st.sampled_from([b"CONNECT", b"10.0.0.1:8080", b"gzip, deflate", b""]))
header_lists = st.lists(st.tuples(names, values), max_size=12)


def as_bytes(headers):
    return [(n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
            for n, v in headers]


def test_huffman_code_is_rfc_7541_appendix_b():
    for sym in range(257):
        assert huffman.code_of(sym) == (REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym])


@given(st.binary(max_size=300))
def test_huffman_round_trip_and_oracle(data):
    ref = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)
    assert huffman.encode(data) == ref
    assert huffman.decode(ref) == data


@pytest.mark.parametrize("bad", [
    b"\xff\xff\xff\xff",          # EOS (30 ones) inside the string
    b"\x1f\xff",                 # 'a' then 11 one-bits: padding longer than 7 bits
    b"\x00",                     # '0' then 3 zero bits: padding not all ones
])
def test_huffman_invalid(bad):
    with pytest.raises(CompressionError):
        huffman.decode(bad)


@settings(max_examples=300)
@given(lists=st.lists(header_lists, min_size=1, max_size=6), huff=st.booleans(),
       table=st.sampled_from([0, 100, 256, 4096]))
def test_our_encoder_their_decoder(lists, huff, table):
    enc, dec = HeaderEncoder(huffman=huff), hpack.Decoder()
    if table != 4096:
        enc.max_table_size = table
    for headers in lists:
        assert dec.decode(enc.encode(headers), raw=True) == as_bytes(headers)
    assert enc.table_size == dec.header_table._current_size


@settings(max_examples=300)
@given(lists=st.lists(header_lists, min_size=1, max_size=6), huff=st.booleans(),
       table=st.sampled_from([0, 100, 256, 4096]))
def test_their_encoder_our_decoder(lists, huff, table):
    enc, dec = hpack.Encoder(), HeaderDecoder()
    if table != 4096:
        enc.header_table_size = table
    for headers in lists:
        assert dec.decode(enc.encode(headers, huffman=huff)) == as_bytes(headers)
    assert dec.table_size == enc.header_table._current_size


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32), count=st.integers(30, 60))
def test_long_sequences_exercise_eviction(seed, count):
    """Enough distinct large fields that the 4 KiB table evicts many times over."""
    rng = random.Random(seed)
    headers = [(f"x-{rng.randrange(40)}", rng.randbytes(rng.randrange(100, 400)).hex())
               for _ in range(count)]
    enc, dec = HeaderEncoder(), hpack.Decoder()
    enc2, dec2 = hpack.Encoder(), HeaderDecoder()
    for i in range(0, len(headers), 3):
        chunk = headers[i:i + 3] + headers[:2]          # repeats hit the dynamic table
        assert dec.decode(enc.encode(chunk), raw=True) == as_bytes(chunk)
        assert dec2.decode(enc2.encode(chunk)) == as_bytes(chunk)
    assert dec2.table == [(n, v) for n, v in enc2.header_table.dynamic_entries]


def test_sensitive_fields_are_never_indexed():
    enc = HeaderEncoder()
    block = enc.encode([("authorization", "Bearer x"), ("x-secret", "s", True)])
    assert block[0] & 0xf0 == 0x10
    assert enc.table_size == 0
    decoded = hpack.Decoder().decode(block)
    assert all(isinstance(h, hpack.NeverIndexedHeaderTuple) for h in decoded)


def test_static_table_matches_rfc():
    assert [(n, v) for n, v in hpack.table.HeaderTable.STATIC_TABLE] == list(STATIC_TABLE)


# RFC 7541 C.3 (no Huffman) and C.4 (Huffman): three requests on one connection
C3 = ["828684410f7777772e6578616d706c652e636f6d",
      "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]
C4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff",
      "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
C_HEADERS = [
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
     ("cache-control", "no-cache")],
    [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
     (":authority", "www.example.com"), ("custom-key", "custom-value")],
]


@pytest.mark.parametrize("vectors,huff", [(C3, False), (C4, True)], ids=["C.3", "C.4"])
def test_rfc_7541_appendix_c_requests(vectors, huff):
    dec, enc = HeaderDecoder(), HeaderEncoder(huffman=huff)
    enc.unindexed_names = frozenset()       # the RFC examples index every field
    for hexblock, headers in zip(vectors, C_HEADERS):
        assert dec.decode(bytes.fromhex(hexblock)) == as_bytes(headers)
        assert enc.encode(headers).hex() == hexblock
    assert dec.table_size == 164


def test_header_list_limit_enforced_while_decoding():
    big = hpack.Encoder()
    block = big.encode([("x-a", "v" * 3000)]) + b"\xbe" * 100      # 100 references to it
    dec = HeaderDecoder(max_header_list_size=16384)
    with pytest.raises(HeaderListTooLarge):
        dec.decode(block)


def test_literal_longer_than_the_budget_is_refused_before_decoding():
    block = hpack.Encoder().encode([("x-a", "v" * 5000)], huffman=False)
    with pytest.raises(HeaderListTooLarge):
        HeaderDecoder(max_header_list_size=1000).decode(block)


@pytest.mark.parametrize("block,why", [
    (b"\x80", "index 0"),
    (b"\xc0", "beyond the table"),           # index 64 with an empty dynamic table
    (b"\x3f\xe1\x7f", "exceeds the allowed"),
    (b"\x82\x20", "after a header field"),
    (b"\x7f\xff\xff\xff\xff\xff\x01", r"longer than 2\^32"),
    (b"\x00\x05ab", "runs past the end"),
    (b"\x00", "ends before a string"),
    (b"\x1f", "ends inside an integer"),
])
def test_malformed_blocks(block, why):
    with pytest.raises(CompressionError, match=why):
        HeaderDecoder().decode(block)


def test_encoder_announces_table_size_changes():
    enc, dec = HeaderEncoder(), hpack.Decoder()
    dec.decode(enc.encode([("x-a", "1")]), raw=True)
    enc.max_table_size = 0
    enc.max_table_size = 2000
    block = enc.encode([("x-b", "2")])
    assert block[:1] == b"\x20"                     # minimum (0) announced first
    dec.header_table_size = 2000
    dec.max_allowed_table_size = 2000
    assert dec.decode(block, raw=True) == [(b"x-b", b"2")]
    assert dec.header_table.maxsize == 2000


def test_encoder_index_bookkeeping_stays_bounded():
    enc = HeaderEncoder()
    for i in range(20000):
        enc.encode([(":authority", f"10.{i >> 8 & 255}.{i & 255}.1:8080")])
    dec = hpack.Decoder()
    assert dec.decode(enc.encode([(":authority", "x:1")]), raw=True) == [(b":authority", b"x:1")]
