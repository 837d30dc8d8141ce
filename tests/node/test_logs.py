"""Access-log lines in ztunnel's shapes: text (tab-separated, key=value) and JSON."""
import datetime
import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.node import logs
from meshcore.node.logs import _Clock, _text_value
from meshcore.sources.config import load
from meshcore.node.record import ConnectionRecord


@pytest.fixture
def record(tmp_path):
    (tmp_path / "m.yaml").write_text("workloads:\n- {uid: a, name: web-1, namespace: shop, workloadIps: [10.0.0.2],"
                                     " serviceAccount: web, canonicalName: web}\n")
    state = load([str(tmp_path / "m.yaml")])
    r = ConnectionRecord("inbound", src_addr="10.0.0.1:4321", dst_addr="10.0.0.2:8080", hbone_addr="10.0.0.2:8080",
                         src_identity="spiffe://cluster.local/ns/shop/sa/client",
                         dst_workload=state.workloads[0], dst_identity="spiffe://cluster.local/ns/shop/sa/web",
                         mtls=True, bytes_sent=10, bytes_recv=20)
    return r.finish()


@pytest.fixture
def captured():
    stream = io.StringIO()
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    yield stream
    logging.getLogger().handlers[:], level = saved
    logging.getLogger().setLevel(level)


def test_text_line(record, captured):
    logs.configure("info", "text", captured)
    logs.access(record)
    when, level, target, message, fields = captured.getvalue().rstrip("\n").split("\t")
    assert (level, target, message) == ("info", "access", "connection complete")
    assert when.endswith("Z") and "T" in when
    assert fields.startswith('src.addr=10.0.0.1:4321 src.identity="spiffe://cluster.local/ns/shop/sa/client" '
                             'dst.addr=10.0.0.2:8080 dst.hbone_addr=10.0.0.2:8080 dst.workload="web-1"')
    assert fields.endswith('direction="inbound" bytes_sent=10 bytes_recv=20 duration="0ms"')


def test_json_line_and_failure(record, captured):
    logs.configure("info", "json", captured)
    record.finish("401: policy rejection", "DENY")
    logs.access(record)
    line = json.loads(captured.getvalue())
    assert line["level"] == "warn" and line["scope"] == "access" and line["message"] == "connection failed"
    assert line["src.identity"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert line["bytes_recv"] == 20 and line["error"] == "401: policy rejection"
    assert record.labels()["response_flags"] == "DENY"
    assert record.labels()["destination_canonical_service"] == "web"


def test_levels(captured):
    logs.configure("access=warn,info", "text", captured)
    assert logging.getLogger("meshcore.access").level == logging.WARNING
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        logs.set_level("loud")
    logging.getLogger("meshcore.access").setLevel(logging.NOTSET)


@given(st.text())
def test_text_values_are_quoted_as_json_quotes_them(value):
    assert _text_value("message", value) == json.dumps(value)


@given(st.floats(min_value=0, max_value=4e9))
def test_log_times_are_the_ones_datetime_writes(created):
    expected = datetime.datetime.fromtimestamp(created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _Clock().format(created) == expected
