"""Istio's TCP metrics (docs/operations.md, Metrics) and the process's own, written by
the proxy in Prometheus' text format (version 0.0.4), as prometheus_client writes it.

prometheus_client is not imported for them: with the HTTP server, WSGI and OpenMetrics
modules it loads, it is about 4.5 MB of an idle node's memory, for counters that are a
number per label set. A proxy that adds metrics of other kinds (the waypoint's
histograms) asks for `registry`: a prometheus_client registry that carries these too.
"""
from __future__ import annotations

import math
import os
from collections import namedtuple

from meshcore.node.record import LABEL_NAMES, ConnectionRecord

Sample = namedtuple("Sample", "name labels value")


class _CounterValue:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class _GaugeValue(_CounterValue):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Family:
    """A counter or gauge and its series by label values: `labels(...)` as in
    prometheus_client (positional or by name), then `inc()`, `dec()`, `set()`."""
    kind = ""
    _value = _CounterValue

    def __init__(self, name: str, documentation: str, labelnames=(), *, registry: list):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.series: dict[tuple[str, ...], _CounterValue] = {}
        # prometheus_client writes the labels of a sample sorted by name
        self._order = sorted(range(len(self.labelnames)), key=self.labelnames.__getitem__)
        registry.append(self)

    def labels(self, *values, **named) -> _CounterValue:
        if named:
            if values or len(named) != len(self.labelnames):
                raise ValueError("Incorrect label names")
            try:
                values = [named[n] for n in self.labelnames]
            except KeyError:
                raise ValueError("Incorrect label names") from None
        elif len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        return self.for_key(tuple(map(str, values)))

    def for_key(self, key: tuple) -> _CounterValue:
        """labels() for values already made a tuple of strings in labelnames' order:
        one key serves every family of a connection's report."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = self._value()
        return series

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def samples(self) -> list[Sample]:
        name = self.sample_name
        return [Sample(name, dict(zip(self.labelnames, key)), s.value) for key, s in self.series.items()]

    def collect(self) -> list:
        """prometheus_client's shape: one metric with its samples."""
        return [_Collected(self.name, self.kind, self.documentation, self.samples())]

    def text(self, out: list[str]) -> None:
        name = self.sample_name
        out.append(f"# HELP {name} {_doc(self.documentation)}\n# TYPE {name} {self.kind}\n")
        names, order = self.labelnames, self._order
        for key, s in self.series.items():
            if names:
                labels = ",".join(f'{names[i]}="{_label(key[i])}"' for i in order)
                out.append(f"{name}{{{labels}}} {go_float(s.value)}\n")
            else:
                out.append(f"{name} {go_float(s.value)}\n")


class Counter(Family):
    kind = "counter"


class Gauge(Family):
    kind = "gauge"
    _value = _GaugeValue


_Collected = namedtuple("_Collected", "name type documentation samples")


def _doc(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def go_float(d: float) -> str:
    """A sample value as Prometheus (Go) writes it (prometheus_client's floatToGoString)."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:                     # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class ProcessMetrics:
    """process_* as prometheus_client's ProcessCollector reports them, from /proc."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        try:
            self.ticks = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError):
            self.ticks = 100.0
        self.pagesize = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self.btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def families(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) in ProcessCollector's order."""
        if not self.btime:
            return []
        me = os.path.join(self.proc, "self")
        out = []
        try:
            with open(os.path.join(me, "stat"), "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            out += [("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float(parts[20])),
                    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                     float(parts[21]) * self.pagesize),
                    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                     float(parts[19]) / self.ticks + self.btime),
                    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                     (float(parts[11]) + float(parts[12])) / self.ticks)]
        except OSError:
            pass
        try:
            max_fds = None
            with open(os.path.join(me, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            out.append(("process_open_fds", "gauge", "Number of open file descriptors.",
                        float(len(os.listdir(os.path.join(me, "fd"))))))
            if max_fds is not None:
                out.append(("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds))
        except OSError:
            pass
        return out

    def text(self, out: list[str]) -> None:
        for name, kind, documentation, value in self.families():
            out.append(f"# HELP {name} {documentation}\n# TYPE {name} {kind}\n{name} {go_float(value)}\n")


class NodeMetrics:
    def __init__(self, version: str):
        self.families: list[Family] = []
        r = self.families
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened", LABEL_NAMES, registry=r)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed", LABEL_NAMES, registry=r)
        self.failed = Counter("istio_tcp_connections_failed", "TCP connections that failed or were refused",
                              LABEL_NAMES, registry=r)
        self.received = Counter("istio_tcp_received_bytes", "Bytes received from the connection's client",
                                LABEL_NAMES, registry=r)
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent to the connection's client",
                            LABEL_NAMES, registry=r)
        self.sockets = Gauge("istio_tcp_sockets_open", "Proxied TCP connections open now", ("reporter",),
                             registry=r)
        Gauge("istio_build", "meshcore build", ("component", "tag"), registry=r).labels("ztunnel", version).set(1)
        self.config_reloads = Counter("meshcore_config_reloads", "Configuration loads by outcome", ("outcome",),
                                      registry=r)
        # ztunnel's xDS metrics (istiod's delta ADS stream)
        self.xds_terminations = Counter("istio_xds_connection_terminations",
                                        "Streams to the xDS server that ended, by reason", ("reason",), registry=r)
        self.xds_messages = Counter("istio_xds_message", "xDS responses received, by type", ("url",), registry=r)
        self.xds_bytes = Counter("istio_xds_message_bytes", "Bytes of xDS resources received, by type", ("url",),
                                 registry=r)
        self.process = ProcessMetrics()       # process_open_fds, process_max_fds, memory, CPU
        self._registry = None

    @property
    def registry(self):
        """A prometheus_client CollectorRegistry holding these metrics, for a proxy that
        registers metrics of its own beside them (the waypoint); made on first use."""
        if self._registry is None:
            # imported here: only a proxy with metrics of other kinds needs the library
            from prometheus_client import CollectorRegistry, disable_created_metrics
            disable_created_metrics()         # ztunnel exports no *_created series
            self._registry = CollectorRegistry()
            self._registry.register(_Bridge(self))
        return self._registry

    # Once or twice per connection each: record.labels() is in LABEL_NAMES' order, so
    # its values make the series key directly (one key for the families a report
    # touches), and the amounts are known not to be negative, so the series are added
    # to directly (no inc() frame).
    def opened_connection(self, record: ConnectionRecord) -> None:
        self.opened.for_key(tuple(map(str, record.labels().values()))).value += 1
        self.sockets.labels(record.reporter).value += 1

    def closed_connection(self, record: ConnectionRecord) -> None:
        key = tuple(map(str, record.labels().values()))
        self.closed.for_key(key).value += 1
        self.received.for_key(key).value += record.bytes_recv
        self.sent.for_key(key).value += record.bytes_sent
        self.sockets.labels(record.reporter).value -= 1

    def failed_connection(self, record: ConnectionRecord) -> None:
        self.failed.for_key(tuple(map(str, record.labels().values()))).value += 1

    def xds_message(self, type_url: str, nbytes: int) -> None:
        self.xds_messages.labels(type_url).inc()
        self.xds_bytes.labels(type_url).inc(nbytes)

    def xds_terminated(self, reason: str) -> None:
        self.xds_terminations.labels(reason).inc()

    def exposition(self) -> bytes:
        if self._registry is not None:
            from prometheus_client import generate_latest
            return generate_latest(self._registry)
        out: list[str] = []
        for family in self.families:
            family.text(out)
        self.process.text(out)
        return "".join(out).encode()


class _Bridge:
    """The node's metrics as prometheus_client metric families (in a registry the
    waypoint adds its own to)."""

    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        for f in self.metrics.families:
            metric = kinds[f.kind](f.name, f.documentation, labels=f.labelnames)
            for key, s in f.series.items():
                metric.add_metric(key, s.value)
            yield metric
        for name, kind, documentation, value in self.metrics.process.families():
            yield kinds[kind](name, documentation, value=value)
