"""The node writes its metrics itself: the same text prometheus_client writes for the
same counters and gauges (prometheus_client is the oracle), with and without the
registry a waypoint adds its own metrics to."""
import re

import pytest

from meshcore.node.metrics import NodeMetrics, ProcessMetrics, go_float
from meshcore.node.record import LABEL_NAMES

prometheus_client = pytest.importorskip("prometheus_client")

LABELS = [dict.fromkeys(LABEL_NAMES, "unknown") | {"reporter": "destination", "source_workload": "web"},
          dict.fromkeys(LABEL_NAMES, 'a "quoted" \\ back\nslash') | {"reporter": "source"},
          dict.fromkeys(LABEL_NAMES, "ünïcode")]
AMOUNTS = (0, 1, 5, 999_999, 1_000_000, 1_234_567, 12_345_678_901, 2.5)


def fake_proc(tmp_path):
    me = tmp_path / "self"
    (me / "fd").mkdir(parents=True)
    for i in range(7):
        (me / "fd" / str(i)).write_text("")
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    fields = ["S"] + [str(i * 1000 + 7) for i in range(1, 50)]
    (me / "stat").write_text("123 (python3 (x)) " + " ".join(fields) + "\n")
    (me / "limits").write_text("Limit                     Soft Limit           Hard Limit           Units\n"
                               "Max open files            1048576              1048576              files\n")
    return tmp_path


def oracle(version: str, proc: str):
    """NodeMetrics as it was written on prometheus_client."""
    from prometheus_client import (CollectorRegistry, Counter, Gauge, ProcessCollector, disable_created_metrics)
    disable_created_metrics()
    r = CollectorRegistry()
    m = {name: Counter(f"istio_tcp_{name}", doc, LABEL_NAMES, registry=r) for name, doc in (
        ("connections_opened", "TCP connections opened"), ("connections_closed", "TCP connections closed"),
        ("connections_failed", "TCP connections that failed or were refused"),
        ("received_bytes", "Bytes received from the connection's client"),
        ("sent_bytes", "Bytes sent to the connection's client"))}
    m["sockets"] = Gauge("istio_tcp_sockets_open", "Proxied TCP connections open now", ("reporter",), registry=r)
    Gauge("istio_build", "meshcore build", ("component", "tag"), registry=r).labels("ztunnel", version).set(1)
    m["reloads"] = Counter("meshcore_config_reloads", "Configuration loads by outcome", ("outcome",), registry=r)
    Counter("istio_xds_connection_terminations", "Streams to the xDS server that ended, by reason", ("reason",),
            registry=r)
    m["xds"] = Counter("istio_xds_message", "xDS responses received, by type", ("url",), registry=r)
    Counter("istio_xds_message_bytes", "Bytes of xDS resources received, by type", ("url",), registry=r)
    ProcessCollector(registry=r, proc=proc, pid=lambda: "self")
    return r, m


def drive(ours: NodeMetrics, theirs: dict):
    for i, labels in enumerate(LABELS):
        for amount in AMOUNTS:
            ours.opened.labels(**labels).inc()
            theirs["connections_opened"].labels(**labels).inc()
            ours.received.labels(**labels).inc(amount * (i + 1))
            theirs["received_bytes"].labels(**labels).inc(amount * (i + 1))
        ours.sockets.labels(labels["reporter"]).inc()
        theirs["sockets"].labels(labels["reporter"]).inc()
    ours.sockets.labels("source").dec(3)
    theirs["sockets"].labels("source").dec(3)
    ours.config_reloads.labels("applied").inc()
    theirs["reloads"].labels("applied").inc()
    ours.xds_messages.labels("type.googleapis.com/istio.workload.Address").inc()
    theirs["xds"].labels("type.googleapis.com/istio.workload.Address").inc()


def test_the_text_is_prometheus_clients(tmp_path):
    proc = str(fake_proc(tmp_path))
    ours = NodeMetrics("1.2.3")
    ours.process = ProcessMetrics(proc)
    registry, theirs = oracle("1.2.3", proc)
    assert ours.exposition() == prometheus_client.generate_latest(registry)     # nothing counted yet
    drive(ours, theirs)
    assert ours.exposition() == prometheus_client.generate_latest(registry)
    assert b'istio_tcp_received_bytes_total{' in ours.exposition()
    # the waypoint's way: a prometheus_client registry carrying the same series
    bridged = prometheus_client.generate_latest(ours.registry)
    assert bridged == prometheus_client.generate_latest(registry)
    assert ours.exposition() == bridged


def test_the_live_process_metrics_are_there():
    text = NodeMetrics("x").exposition().decode()
    for name in ("process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
                 "process_cpu_seconds_total", "process_open_fds", "process_max_fds"):
        assert re.search(rf"^{name} \S+$", text, re.M), name


def test_labels_are_checked_as_prometheus_client_checks_them():
    m = NodeMetrics("x")
    with pytest.raises(ValueError):
        m.sockets.labels()
    with pytest.raises(ValueError):
        m.sockets.labels(reporter="a", other="b")
    with pytest.raises(ValueError):
        m.opened.labels(reporter="source")
    with pytest.raises(ValueError):
        m.config_reloads.labels("applied").inc(-1)
    assert m.sockets.labels(reporter="a") is m.sockets.labels("a")


@pytest.mark.parametrize("value", [0, 1, 0.5, 123456.0, 1234567.0, 1e16, 12345678901, -5, float("inf"),
                                   float("-inf"), float("nan"), 2 ** 53 + 1])
def test_numbers_are_written_as_go_writes_them(value):
    from prometheus_client.utils import floatToGoString
    assert go_float(value) == floatToGoString(value)
