"""The RFC 9113 5.1 stream state table, cell by cell (reserved states omitted: push is off)."""
import pytest

from meshcore._core.h2conn import next_state

IDLE, OPEN, HCL, HCR, CLOSED = range(5)
(SEND_H, RECV_H, SEND_D, RECV_D, SEND_ES, RECV_ES, SEND_RST, RECV_RST) = range(8)

EXPECTED = {
    IDLE: {SEND_H: OPEN, RECV_H: OPEN},
    OPEN: {SEND_H: OPEN, RECV_H: OPEN, SEND_D: OPEN, RECV_D: OPEN, SEND_ES: HCL, RECV_ES: HCR,
           SEND_RST: CLOSED, RECV_RST: CLOSED},
    HCL: {RECV_H: HCL, RECV_D: HCL, RECV_ES: CLOSED, SEND_RST: CLOSED, RECV_RST: CLOSED},
    HCR: {SEND_H: HCR, SEND_D: HCR, SEND_ES: CLOSED, SEND_RST: CLOSED, RECV_RST: CLOSED},
    CLOSED: {},
}


@pytest.mark.parametrize("state", range(5))
@pytest.mark.parametrize("event", range(8))
def test_transition(state, event):
    assert next_state(state, event) == EXPECTED[state].get(event, -1)
