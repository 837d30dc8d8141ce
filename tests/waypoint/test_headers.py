"""The headers a waypoint sets on a request it forwards (pure functions, as a table)."""
import re

import pytest

from meshcore.waypoint.headers import continued_traceparent, forwarded_headers

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_trace_is_continued_with_a_new_span_and_its_flags():
    out = continued_traceparent(TRACE)
    version, trace, span, flags = out.split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", span)


@pytest.mark.parametrize("bad", [None, "", "garbage", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 "00-00000000000000000000000000000000-00f067aa0ba902b7-01"])
def test_a_missing_or_invalid_trace_starts_a_new_one(bad):
    out = continued_traceparent(bad)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", out)
    assert "0" * 32 not in out


def test_forwarded_headers_drop_hop_by_hop_and_add_the_mesh_ones():
    headers = [("host", "web"), ("connection", "keep-alive, x-secret"), ("x-secret", "1"), ("keep-alive", "5"),
               ("te", "trailers"), ("traceparent", TRACE), ("x-forwarded-proto", "https"), ("accept", "*/*")]
    out, request_id = forwarded_headers(headers, upgrade=False)
    names = [n for n, _ in out]
    assert "connection" not in names and "x-secret" not in names and "keep-alive" not in names
    assert ("te", "trailers") in out and ("accept", "*/*") in out and ("host", "web") in out
    assert dict(out)["x-forwarded-proto"] == "http"
    assert dict(out)["x-request-id"] == request_id and len(request_id) == 36
    assert dict(out)["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert names.count("traceparent") == 1


def test_an_existing_request_id_is_kept():
    out, request_id = forwarded_headers([("x-request-id", "abc")], upgrade=False)
    assert request_id == "abc" and [v for n, v in out if n == "x-request-id"] == ["abc"]


def test_an_upgrade_keeps_its_upgrade_headers():
    out, _ = forwarded_headers([("connection", "Upgrade"), ("upgrade", "websocket")], upgrade=True)
    assert ("upgrade", "websocket") in out and any(n == "connection" for n, _ in out)
