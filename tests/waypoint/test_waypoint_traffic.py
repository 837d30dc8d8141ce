"""Traffic management through a waypoint process, after the Gateway API conformance
suite's mesh tests (weights, header modifiers, query matches, GRPCRoute) and Istio's
traffic-management documentation (request routing, traffic shifting, fault injection, retries,
mirroring, local rate limits): tests/support/waypoint_mesh.py with three more workloads
on node-b, `one` (labels version v1), `two` (v2) and `bad`, served by one process,
tests/support/echo_backends.py (every HTTP answer and gRPC reply says which backend
gave it and what it received; `bad` answers every HTTP request 503 and every gRPC call
UNAVAILABLE), the services over them, and a second client workload on node-a. Clients
speak HTTP/1.1 with keep-alive through node-a's SOCKS5 (hundreds of requests on a few
connections: the waypoint decides per request, not per connection), and grpcio through
tests/support/socks_forwarder.py. Each test checks which backend answered, the status,
what the backend received and the waypoint's access lines."""
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from math import comb
from pathlib import Path

import grpc
import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

SUPPORT = Path(__file__).resolve().parent.parent / "support"

TRAFFIC = """\
---
workloads:
- {{uid: c/client2, name: client2, namespace: shop, serviceAccount: client2, workloadIps: ["{client2}"],
   protocol: HBONE, node: node-a}}
- {{uid: c/one, name: one, namespace: shop, serviceAccount: one, workloadIps: ["{one}"], protocol: HBONE,
   node: node-b, labels: {{version: v1}},
   services: {{"shop/echo.shop.svc.cluster.local": {{80: 8080}},
              "shop/echo-one.shop.svc.cluster.local": {{80: 8080, 50051: 50051}},
              "shop/flaky.shop.svc.cluster.local": {{80: 8080, 50051: 50051}},
              "shop/shaky.shop.svc.cluster.local": {{80: 8080}},
              "shop/mending.shop.svc.cluster.local": {{80: 8080}},
              "shop/echo-vs.shop.svc.cluster.local": {{80: 8080}},
              "shop/echo-both.shop.svc.cluster.local": {{80: 8080}},
              "shop/rpc.shop.svc.cluster.local": {{50051: 50051}},
              "shop/rpc-vs.shop.svc.cluster.local": {{50051: 50051}}}}}}
- {{uid: c/two, name: two, namespace: shop, serviceAccount: two, workloadIps: ["{two}"], protocol: HBONE,
   node: node-b, labels: {{version: v2}},
   services: {{"shop/echo-two.shop.svc.cluster.local": {{80: 8080, 50051: 50051}},
              "shop/echo-both.shop.svc.cluster.local": {{80: 8080}},
              "shop/pooled.shop.svc.cluster.local": {{80: 8080}}}}}}
- {{uid: c/bad, name: bad, namespace: shop, serviceAccount: bad, workloadIps: ["{bad}"], protocol: HBONE,
   node: node-b, services: {{"shop/flaky.shop.svc.cluster.local": {{80: 8080, 50051: 50051}},
                             "shop/broken.shop.svc.cluster.local": {{80: 8080}},
                             "shop/shaky.shop.svc.cluster.local": {{80: 8080}},
                             "shop/mending.shop.svc.cluster.local": {{80: 8080}},
                             "shop/echo-three.shop.svc.cluster.local": {{80: 8080, 50051: 50051}}}}}}
services:
- {{name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/{echo}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: echo-one, namespace: shop, hostname: echo-one.shop.svc.cluster.local, vips: ["/{echo_one}"],
   ports: {{80: 8080, 50051: 50051}}, appProtocols: {{80: http, 50051: grpc}}}}
- {{name: echo-two, namespace: shop, hostname: echo-two.shop.svc.cluster.local, vips: ["/{echo_two}"],
   ports: {{80: 8080, 50051: 50051}}, appProtocols: {{80: http, 50051: grpc}}}}
- {{name: rpc-vs, namespace: shop, hostname: rpc-vs.shop.svc.cluster.local, vips: ["/{rpc_vs}"],
   ports: {{50051: 50051}}, appProtocols: {{50051: grpc}},
   waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: echo-three, namespace: shop, hostname: echo-three.shop.svc.cluster.local, vips: ["/{echo_three}"],
   ports: {{80: 8080, 50051: 50051}}, appProtocols: {{80: http, 50051: grpc}}}}
- {{name: echo-both, namespace: shop, hostname: echo-both.shop.svc.cluster.local, vips: ["/{echo_both}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
- {{name: broken, namespace: shop, hostname: broken.shop.svc.cluster.local, vips: ["/{broken}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}}}
- {{name: shaky, namespace: shop, hostname: shaky.shop.svc.cluster.local, vips: ["/{shaky}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}}}
- {{name: mending, namespace: shop, hostname: mending.shop.svc.cluster.local, vips: ["/{mending}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
- {{name: pooled, namespace: shop, hostname: pooled.shop.svc.cluster.local, vips: ["/{pooled}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}}}
- {{name: flaky, namespace: shop, hostname: flaky.shop.svc.cluster.local, vips: ["/{flaky}"],
   ports: {{80: 8080, 50051: 50051}}, appProtocols: {{80: http, 50051: grpc}}}}
- {{name: echo-vs, namespace: shop, hostname: echo-vs.shop.svc.cluster.local, vips: ["/{echo_vs}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: rpc, namespace: shop, hostname: rpc.shop.svc.cluster.local, vips: ["/{rpc}"], ports: {{50051: 50051}},
   appProtocols: {{50051: grpc}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-routes, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /split90}}}}]
    backendRefs: [{{name: echo-one, port: 80, weight: 90}}, {{name: echo-two, port: 80, weight: 10}},
                  {{name: echo-three, port: 80, weight: 0}}]
  - matches: [{{path: {{type: PathPrefix, value: /split50}}}}]
    filters:
    - {{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: x-split, value: "50"}}]}}}}
    backendRefs: [{{name: echo-one, port: 80}}, {{name: echo-two, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /retry}}}}]
    retry: {{attempts: 2, codes: [503]}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /noretry}}}}]
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: echo-two, port: 80}}}}}}]
    backendRefs: [{{name: echo-one, port: 80}}]
  - name: limited
    matches: [{{path: {{type: PathPrefix, value: /limited}}}}]
    backendRefs: [{{name: echo-one, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /headers}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: X-Header-Set, value: set-overwrites-values}}]
        add: [{{name: X-Header-Add, value: add-appends-values}}]
        remove: [X-Header-Remove]
    backendRefs: [{{name: echo-two, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /query}}, queryParams: [{{name: animal, value: whale}}]}}]
    backendRefs: [{{name: echo-two, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /query}}}}]
    backendRefs: [{{name: echo-one, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /eject}}}}]
    backendRefs: [{{name: shaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /mend}}}}]
    backendRefs: [{{name: mending, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /pooled}}}}]
    filters:
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-pool, value: pooled}}]}}}}
    - {{type: CORS, cors: {{allowOrigins: ["https://app.example"]}}}}
    backendRefs: [{{name: pooled, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /gwpertry}}}}]
    timeouts: {{request: 3s, backendRequest: 200ms}}
    retry: {{attempts: 2, codes: [503]}}
    backendRefs: [{{name: echo-one, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /perbackend}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: rewritten.example}}}}]
    backendRefs:
    - name: echo-one
      port: 80
      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Which, value: one}}]}}}}]
    - name: echo-two
      port: 80
      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Which, value: two}}]}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /exhaust}}}}]
    retry: {{attempts: 2, codes: [503]}}
    backendRefs: [{{name: broken, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shaky, namespace: shop}}
spec:
  host: shaky
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mending, namespace: shop}}
spec:
  host: mending
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 500ms, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pooled, namespace: shop}}
spec:
  host: pooled
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1}}
      http: {{http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: two-per-client, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: echo-routes, sectionName: limited}}]
  tokenBucket: {{maxTokens: 2, tokensPerFill: 2, fillInterval: 60s}}
  perSource: true
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: one-call, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: GRPCRoute, name: rpc-routes, sectionName: metered}}]
  tokenBucket: {{maxTokens: 1, tokensPerFill: 1, fillInterval: 60s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-vs, namespace: shop}}
spec:
  hosts: [echo-vs]
  http:
  - match: [{{uri: {{prefix: /vsretry}}}}]
    retries: {{attempts: 1, retryOn: 5xx}}
    route: [{{destination: {{host: flaky}}}}]
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: echo-one}}}}]
  - match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 0.4s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo-one}}}}]
  - match: [{{uri: {{prefix: /mirror}}}}]
    mirror: {{host: echo-two}}
    mirrorPercentage: {{value: 100}}
    route: [{{destination: {{host: echo-one}}}}]
  - match: [{{uri: {{prefix: /shift}}}}]
    route:
    - {{destination: {{host: echo-both, subset: v1}}, weight: 80}}
    - {{destination: {{host: echo-both, subset: v2}}, weight: 20}}
  - match: [{{uri: {{prefix: /reviews}}, headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: echo-both, subset: v2}}}}]
  - match: [{{uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: echo-both, subset: v1}}}}]
  - match: [{{uri: {{prefix: /vstimeout}}}}]
    timeout: 200ms
    route: [{{destination: {{host: echo-one}}}}]
  - match: [{{uri: {{prefix: /pertry}}}}]
    timeout: 3s
    retries: {{attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}}
    route: [{{destination: {{host: echo-one}}}}]
  - match: [{{uri: {{regex: "/regex/v[0-9]+/.*"}}}}]
    rewrite:
      uriRegexRewrite: {{match: '^/regex/(v[0-9]+)/(.*)$', rewrite: '/\\2/\\1'}}
      authority: echo-two.shop
    headers:
      request: {{set: {{x-set: a}}, add: {{x-add: b}}, remove: [x-remove]}}
      response: {{set: {{x-route: regex}}, remove: [x-backend]}}
    route:
    - destination: {{host: echo-two}}
      headers: {{request: {{set: {{x-destination: two}}}}}}
  - match: [{{uri: {{exact: /direct}}}}]
    directResponse: {{status: 418, body: {{string: "short and stout"}}}}
  - match: [{{uri: {{prefix: /sticky}}}}]
    route: [{{destination: {{host: echo-both}}}}]
  - route: [{{destination: {{host: echo-one}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo-both, namespace: shop}}
spec:
  host: echo-both
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: rpc-vs, namespace: shop}}
spec:
  hosts: [rpc-vs.shop.svc.cluster.local]
  http:
  - match: [{{uri: {{exact: /meshcore.test.Echo/Abort}}}}]
    fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: rpc-vs}}}}]
  - match: [{{headers: {{x-variant: {{exact: two}}}}}}]
    route: [{{destination: {{host: echo-two, port: {{number: 50051}}}}}}]
  - route: [{{destination: {{host: rpc-vs}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: rpc-routes, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: rpc, port: 50051}}]
  rules:
  - matches: [{{method: {{service: meshcore.test.Echo, method: Special}}}}]
    backendRefs: [{{name: echo-two, port: 50051}}]
  - matches: [{{headers: [{{name: x-variant, value: two}}]}}]
    backendRefs: [{{name: echo-two, port: 50051}}]
  - matches: [{{method: {{service: meshcore.test.Weighted}}}}]
    backendRefs: [{{name: echo-one, port: 50051, weight: 70}}, {{name: echo-two, port: 50051, weight: 30}},
                  {{name: echo-three, port: 50051, weight: 0}}]
  - matches: [{{headers: [{{name: x-test-case, value: modify}}]}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: x-header-set, value: set-overwrites-values}}]
        add: [{{name: x-header-add, value: add-appends-values}}]
        remove: [x-header-remove]
    backendRefs: [{{name: echo-one, port: 50051}}]
  - name: metered
    matches: [{{method: {{service: meshcore.test.Metered}}}}]
    backendRefs: [{{name: echo-two, port: 50051}}]
  - matches: [{{method: {{service: meshcore.test.Flaky}}}}]
    backendRefs: [{{name: flaky, port: 50051}}]
  - backendRefs: [{{name: echo-one, port: 50051}}]
"""

# The chance a correct waypoint fails one statistical assertion here: each interval
# below leaves out at most this much of the binomial distribution (half each side).
# With the five such assertions in this file, a correct waypoint fails the file by
# chance less than once in 2 million runs.
ALPHA = 1e-7


def binomial_interval(n: int, p: float, alpha: float = ALPHA) -> tuple[int, int]:
    """The narrowest [lo, hi] such that P(X < lo) and P(X > hi) are each at most alpha/2
    for X ~ Binomial(n, p), from the exact distribution."""
    pmf = [comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-traffic"))
    n = m.web.split(".")[1]
    m.client2 = f"127.{n}.1.2"
    m.one, m.two, m.bad = f"127.{n}.3.1", f"127.{n}.3.2", f"127.{n}.3.3"
    m.echo, m.echo_one, m.echo_two, m.flaky, m.echo_vs, m.rpc, m.echo_three, m.echo_both, m.broken, m.rpc_vs, \
        m.shaky, m.pooled, m.mending = (f"127.{n}.11.{i}" for i in range(1, 14))
    m.config.write_text(m.config.read_text() + TRAFFIC.format(
        client2=m.client2, one=m.one, two=m.two, bad=m.bad, echo=m.echo, echo_one=m.echo_one, echo_two=m.echo_two,
        flaky=m.flaky, echo_vs=m.echo_vs, rpc=m.rpc, echo_three=m.echo_three,
        echo_both=m.echo_both, broken=m.broken, rpc_vs=m.rpc_vs, shaky=m.shaky, pooled=m.pooled, mending=m.mending,
        waypoint=m.waypoint))
    with running(m, ["--http", f"one={m.one}:8080", "--http", f"two={m.two}:8080", "--http", f"bad={m.bad}:8080:503",
                     "--grpc", f"one={m.one}:50051", "--grpc", f"two={m.two}:50051",
                     "--grpc", f"three={m.bad}:50051:14"]):
        yield m


# -- an HTTP/1.1 keep-alive client through node-a ------------------------------------------------

async def _connect(mesh, source, host, port=80):
    m = LocalMesh.__new__(LocalMesh)
    m.node = mesh.node
    return await LocalMesh.socks5(m, source, host, port)


async def _exchange(reader, writer, host, path, headers, method="GET", body=b""):
    length = f"content-length: {len(body)}\r\n" if body else ""
    writer.write((f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{length}"
                  + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    fields = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    if "chunked" in fields.get("transfer-encoding", ""):
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    elif "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
    else:
        body = await reader.read()
    return status, fields, body.decode()


class Answer:
    def __init__(self, path, status, headers, body, elapsed):
        self.path, self.status, self.headers, self.body, self.elapsed = path, status, headers, body, elapsed
        try:
            self.echo = json.loads(body) if headers.get("x-backend") else None
        except ValueError:
            self.echo = None

    @property
    def backend(self):
        return self.echo["backend"] if self.echo else None

    def __repr__(self):
        return f"<{self.path} {self.status} {self.backend} {self.body[:200]!r}>"


def get(mesh, host, paths, *, connections=1, source=None, headers=(), method="GET", body=b"") -> list[Answer]:
    """GET (or `method` with `body`) each path from the client workload (or `source`), on
    `connections` keep-alive connections side by side (one after the other on each): the
    answers in the paths' order."""
    answers = [None] * len(paths)

    async def one_connection(indexes):
        reader = writer = None
        for i in indexes:
            if writer is None:
                reader, writer = await _connect(mesh, source or mesh.client, host)
            started = time.monotonic()
            status, fields, text = await _exchange(reader, writer, host, paths[i], headers, method, body)
            answers[i] = Answer(paths[i], status, fields, text, time.monotonic() - started)
            if fields.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def run():
        await asyncio.wait_for(asyncio.gather(*(one_connection(range(c, len(paths), connections))
                                                for c in range(connections))), 60)
    asyncio.run(run())
    return answers


def access_lines(mesh, path_prefix):
    return [line for line in mesh.log("waypoint").splitlines() if f'http.path="{path_prefix}' in line]


def seen(address, prefix):
    """What the backend at `address` received, of the paths under `prefix`."""
    status, body = LocalMesh.http_get(address, 8080, "/__seen")[:2]
    assert status == 200, body
    return [r for r in json.loads(body) if r["path"].startswith(prefix)]


def config_version(mesh):
    status, body = LocalMesh.http_get(mesh.waypoint, 15000, "/config_dump")[:2]
    assert status == 200, body
    return json.loads(body)["configVersion"]


# a first try reaches the backend without x-envoy-attempt-count, or with "1" (Envoy
# under Istio's proxyHeaders.attemptCount): either is taken as a first try
FIRST = "first try"


def first_tries_as_one(counts):
    """Attempt counts as the backend saw them, a first try's (no header, or "1") as FIRST."""
    return [FIRST if c in (None, "1") else c for c in counts]


# -- weights -------------------------------------------------------------------------------------

def test_a_90_10_split_sends_each_backend_its_share_within_binomial_bounds(mesh):
    answers = get(mesh, mesh.echo, [f"/split90/{i}" for i in range(400)], connections=8)
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    # each backend saw the request as sent: method, path and the service's authority
    assert all(a.echo["method"] == "GET" and a.echo["path"] == a.path and a.echo["host"] == mesh.echo
               for a in answers), answers[:3]
    ones = sum(a.backend == "one" for a in answers)
    assert {a.backend for a in answers} == {"one", "two"}
    lo, hi = binomial_interval(400, 0.9)          # 325..388: an even split or one backend alone lands far outside
    assert lo <= ones <= hi, (ones, lo, hi)


def test_an_even_split_sends_each_backend_half_within_binomial_bounds_with_the_rules_header(mesh):
    answers = get(mesh, mesh.echo, [f"/split50/even{i}" for i in range(400)], connections=8)
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    assert all(a.echo["headers"].get("x-split") == "50" for a in answers), answers[:3]
    ones = sum(a.backend == "one" for a in answers)
    lo, hi = binomial_interval(400, 0.5)          # 147..253
    assert lo <= ones <= hi, (ones, lo, hi)
    lines = access_lines(mesh, "/split50/even")
    assert len(lines) == 400 and all('route="shop.echo-routes.1"' in line for line in lines), lines[:2]


# -- matches, rewrites, header edits, load balancing -------------------------------------------

def test_a_request_header_modifier_sets_adds_and_removes_what_the_backend_sees(mesh):
    # as the conformance suite's MeshHTTPRouteRequestHeaderModifier: names are case-insensitive
    answer = get(mesh, mesh.echo, ["/headers/all"], headers=(
        ("X-Header-Set", "to-be-overwritten"), ("x-header-add", "existing"), ("X-Header-Remove", "val"),
        ("Some-Other-Header", "val")))[0]
    assert answer.status == 200 and answer.backend == "two", answer
    seen_headers = answer.echo["headers"]
    assert seen_headers["x-header-set"] == "set-overwrites-values" and seen_headers["some-other-header"] == "val"
    assert seen_headers["x-header-add"] == "existing,add-appends-values", seen_headers
    assert "x-header-remove" not in seen_headers, seen_headers
    # without the client's values: set and add both just set
    bare = get(mesh, mesh.echo, ["/headers/bare"])[0].echo["headers"]
    assert bare["x-header-set"] == "set-overwrites-values" and bare["x-header-add"] == "add-appends-values", bare


def test_a_backends_own_header_modifier_applies_to_the_requests_it_takes_only(mesh):
    # as MeshHTTPRouteBackendRequestHeaderModifier, with the rule's URLRewrite of the host
    answers = get(mesh, mesh.echo, [f"/perbackend/{i}" for i in range(30)], headers=(("x-which", "client"),))
    assert all(a.status == 200 and a.echo["headers"]["x-which"] == a.backend for a in answers), answers
    assert all(a.echo["host"] == "rewritten.example" for a in answers), answers[0].echo
    # an even split: 30 requests all to one backend would be a 1 in 500 million accident
    assert {a.backend for a in answers} == {"one", "two"}


def test_a_virtual_service_shifts_80_20_between_destination_rule_subsets_within_binomial_bounds(mesh):
    # as Istio's traffic-shifting guide: weights across the subsets of one host
    answers = get(mesh, mesh.echo_vs, [f"/shift/{i}" for i in range(400)], connections=8)
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    ones = sum(a.backend == "one" for a in answers)
    assert ones + sum(a.backend == "two" for a in answers) == 400
    lo, hi = binomial_interval(400, 0.8)          # 275..359
    assert lo <= ones <= hi, (ones, lo, hi)


def test_a_destination_rules_consistent_hash_keeps_each_user_on_one_endpoint(mesh):
    users = [f"user{i}" for i in range(40)]
    chosen = {}
    for user in users:
        answers = get(mesh, mesh.echo_vs, [f"/sticky/{user}/{i}" for i in range(5)], headers=(("x-user", user),))
        assert all(a.status == 200 for a in answers), answers
        assert len({a.backend for a in answers}) == 1, (user, answers)
        chosen[user] = answers[0].backend
    # 40 keys on a ring of two endpoints: all on one would be a 1 in 2^39 accident of hashing
    assert set(chosen.values()) == {"one", "two"}, chosen


def test_a_virtual_service_routes_one_user_to_a_subset_and_everyone_else_to_another(mesh):
    # as Istio's request-routing guide: end-user jason sees v2, everyone else v1
    jason = get(mesh, mesh.echo_vs, [f"/reviews/{i}" for i in range(5)], headers=(("end-user", "jason"),))
    others = get(mesh, mesh.echo_vs, [f"/reviews/{i}" for i in range(5)], headers=(("end-user", "json"),))
    anonymous = get(mesh, mesh.echo_vs, ["/reviews/0"])
    assert {(a.status, a.backend) for a in jason} == {(200, "two")}, jason
    assert {(a.status, a.backend) for a in others + anonymous} == {(200, "one")}, others + anonymous


def test_a_query_parameter_match_chooses_the_backend(mesh):
    # as the conformance suite's MeshHTTPRouteQueryParamMatching: exact and case-sensitive
    answers = get(mesh, mesh.echo, ["/query?animal=whale", "/query?animal=Whale", "/query?color=blue&animal=whale",
                                    "/query"])
    assert [(a.status, a.backend) for a in answers] == [(200, "two"), (200, "one"), (200, "two"), (200, "one")], \
        answers
    assert answers[2].echo["path"] == "/query?color=blue&animal=whale"


def test_a_virtual_service_rewrites_by_regex_edits_headers_both_ways_and_answers_directly(mesh):
    answer = get(mesh, mesh.echo_vs, ["/regex/v7/items"], headers=(
        ("x-set", "old"), ("x-add", "existing"), ("x-remove", "gone"), ("x-other", "kept")))[0]
    assert answer.status == 200, answer
    # x-backend removed from the response: which backend answered is in the body only
    echo = json.loads(answer.body)
    assert echo["backend"] == "two" and echo["path"] == "/items/v7" and echo["host"] == "echo-two.shop", echo
    seen_headers = echo["headers"]
    assert (seen_headers["x-set"], seen_headers["x-add"], seen_headers["x-destination"], seen_headers["x-other"]) \
        == ("a", "existing,b", "two", "kept") and "x-remove" not in seen_headers, seen_headers
    assert answer.headers["x-route"] == "regex" and "x-backend" not in answer.headers, answer.headers
    direct = get(mesh, mesh.echo_vs, ["/direct"])[0]
    assert (direct.status, direct.body, direct.backend) == (418, "short and stout", None), direct


# -- timeouts, outlier detection, connection pools ----------------------------------------------

def test_a_virtual_services_timeout_answers_504_before_a_slow_backend_does(mesh):
    started = time.monotonic()
    slow = get(mesh, mesh.echo_vs, ["/vstimeout/slow"], headers=(("x-delay-ms", "1500"),))[0]
    assert (slow.status, slow.body, slow.backend) == (504, "upstream request timeout", None), slow
    assert time.monotonic() - started < 1.2
    quick = get(mesh, mesh.echo_vs, ["/vstimeout/quick"], headers=(("x-delay-ms", "10"),))[0]
    assert quick.status == 200 and quick.backend == "one", quick
    lines = access_lines(mesh, "/vstimeout/slow")
    assert len(lines) == 1 and 'response_flags="UT"' in lines[0], lines


def test_a_per_try_timeout_gives_up_each_slow_attempt_and_retries_it(mesh):
    # retryOn 5xx takes an attempt that outlived perTryTimeout (Envoy's 5xx: "or does not
    # respond at all"): three attempts of 200 ms, then the timeout's 504
    started = time.monotonic()
    answer = get(mesh, mesh.echo_vs, ["/pertry/slow"], headers=(("x-delay-ms", "1000"),))[0]
    elapsed = time.monotonic() - started
    assert (answer.status, answer.body) == (504, "upstream request timeout"), answer
    assert 0.6 <= elapsed < 1.5, elapsed                      # not the route's 3 s, nor the backend's 1 s
    tries = first_tries_as_one(r["headers"].get("x-envoy-attempt-count") for r in seen(mesh.one, "/pertry/slow"))
    assert tries == [FIRST, "2", "3"], tries
    lines = access_lines(mesh, "/pertry/slow")
    # the last attempt timed out too, with no retry left: Envoy's router sets both
    assert len(lines) == 1 and "attempts=3" in lines[0] and 'response_flags="UT,URX"' in lines[0], lines
    # an attempt within perTryTimeout is answered as usual
    assert get(mesh, mesh.echo_vs, ["/pertry/quick"], headers=(("x-delay-ms", "10"),))[0].status == 200


def test_an_httproutes_backend_request_timeout_bounds_each_attempt(mesh):
    # istiod: backendRequest is the per-try timeout when the rule retries; retrying only
    # 503 (no 5xx nor gateway-error), Envoy does not retry the timed-out attempt
    started = time.monotonic()
    answer = get(mesh, mesh.echo, ["/gwpertry/slow"], headers=(("x-delay-ms", "1000"),))[0]
    assert (answer.status, answer.body) == (504, "upstream request timeout"), answer
    assert time.monotonic() - started < 0.9
    assert len(seen(mesh.one, "/gwpertry/slow")) == 1


def test_outlier_detection_ejects_an_endpoint_after_its_consecutive_503s(mesh):
    # consecutive5xxErrors: 2: the 503s `bad` answers count, not only failed connections
    answers = get(mesh, mesh.echo, [f"/eject/{i}" for i in range(12)])
    failed = [a for a in answers if a.status == 503]
    assert len(failed) == 2 and all(a.backend == "bad" for a in failed), answers
    # round robin: both of them within the first four requests, then `one` alone
    assert {(a.status, a.backend) for a in answers[4:]} == {(200, "one")}, answers


def test_an_ejected_endpoint_takes_requests_again_once_its_ejection_time_is_up(mesh):
    # baseEjectionTime 500ms, checked every 100ms: `bad` is left out, then back, its
    # first 503 after it not enough to eject it again (its count started over)
    first = get(mesh, mesh.echo, [f"/mend/a{i}" for i in range(8)])
    assert [a.backend for a in first].count("bad") == 2 and {a.backend for a in first[4:]} == {"one"}, first
    time.sleep(0.9)
    second = get(mesh, mesh.echo, [f"/mend/b{i}" for i in range(4)])
    assert [(a.status, a.backend) for a in second].count((503, "bad")) >= 1, second


def test_a_connection_pool_limit_answers_overflow_503s_as_in_istios_circuit_breaking_guide(mesh):
    # one connection, one pending request: of six requests at once, while the first two
    # are held by the backend, the others overflow (503, flag UO) at once
    answers = get(mesh, mesh.echo, [f"/pooled/{i}" for i in range(6)], connections=6,
                  headers=(("x-delay-ms", "500"), ("origin", "https://app.example")))
    overflowed = [a for a in answers if a.status == 503]
    assert overflowed and all(a.backend is None for a in overflowed), answers
    # the overflow answer is the router's own, with the route's response edits and CORS headers
    assert all(a.headers.get("x-pool") == "pooled" and a.headers.get("access-control-allow-origin")
               == "https://app.example" for a in answers), [a.headers for a in answers]
    assert any(a.status == 200 and a.backend == "two" for a in answers), answers
    flagged = [line for line in access_lines(mesh, "/pooled/") if 'response_flags="UO"' in line]
    assert len(flagged) == len(overflowed), flagged


# -- retries -------------------------------------------------------------------------------------

def _retried(mesh, host, prefix, route):
    answers = get(mesh, host, [f"{prefix}/{i}" for i in range(20)])
    assert [a.status for a in answers] == [200] * 20, answers
    assert {a.backend for a in answers} == {"one"}
    lines = access_lines(mesh, f"{prefix}/")
    assert len(lines) == 20 and all(f'route="{route}"' in line for line in lines), lines
    retried = [line for line in lines if "attempts=2" in line]
    # flaky's two endpoints are taken in turn, a retry's pick counting as one (as Envoy's
    # round robin does): which requests meet `bad` first depends on the picks before them
    assert retried and all('dst.workload="one"' in line for line in retried), lines
    # each retried request reached `bad` once, then `one` saying it was the second attempt
    assert len(seen(mesh.bad, f"{prefix}/")) == len(retried)
    # a first try carries no count, or "1" (Envoy with Istio's proxyHeaders.attemptCount)
    counted = first_tries_as_one(r["headers"].get("x-envoy-attempt-count") for r in seen(mesh.one, f"{prefix}/"))
    assert sorted(counted) == sorted(["2"] * len(retried) + [FIRST] * (20 - len(retried))), counted


def test_an_httproute_retry_on_503_turns_a_failing_endpoints_answers_into_200s(mesh):
    _retried(mesh, mesh.echo, "/retry/get", "shop.echo-routes.2")


def test_a_retried_post_goes_again_with_its_body(mesh):
    answers = get(mesh, mesh.echo, [f"/retry/post{i}" for i in range(6)], method="POST", body=b"payload")
    assert all(a.status == 200 and a.echo["method"] == "POST" and a.echo["body"] == "payload"
               for a in answers), answers
    # sequential requests take flaky's endpoints in turn: at least one met `bad` first
    first_tries = seen(mesh.bad, "/retry/post")
    assert first_tries and all(r["body"] == "payload" for r in first_tries), first_tries
    retried = [line for line in access_lines(mesh, "/retry/post") if "attempts=2" in line]
    assert len(retried) == len(first_tries), retried


def test_an_http2_clients_retried_post_goes_again_with_its_body_to_an_http1_backend(mesh):
    async def run():
        reader, writer = await mesh.socks5(mesh.echo, 80)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        got = []
        for i in range(6):                         # one after the other: flaky's endpoints in turn
            sid = open_request(ep, "POST", f"/retry/h2post{i}", f"{mesh.echo}:80")
            ep.send(sid, b"payload", end=True)
            got.append(await asyncio.wait_for(Received().collect(ep.queue(sid)), 10))
        writer.close()
        return got
    answers = asyncio.run(run())
    assert [a.response[0] for a in answers] == [200] * 6, [(a.response, bytes(a.body)[:80]) for a in answers]
    assert all(json.loads(bytes(a.body))["body"] == "payload" for a in answers)
    first_tries = seen(mesh.bad, "/retry/h2post")
    assert first_tries and all(r["body"] == "payload" for r in first_tries), first_tries


def test_an_httproute_retrys_attempts_count_retries_after_the_first_try(mesh):
    # Gateway API's retry.attempts is "the maximum number of times a request should be
    # retried" (istiod: retries.attempts): 2 retries, 3 tries, then the last answer goes back
    answer = get(mesh, mesh.echo, ["/exhaust/once"])[0]
    assert answer.status == 503 and answer.backend == "bad", answer
    tries = first_tries_as_one(r["headers"].get("x-envoy-attempt-count") for r in seen(mesh.bad, "/exhaust/once"))
    assert tries == [FIRST, "2", "3"], tries
    lines = access_lines(mesh, "/exhaust/once")
    assert len(lines) == 1 and "attempts=3" in lines[0] and 'http.status=503' in lines[0], lines


def test_istios_default_retry_turns_a_grpc_unavailable_into_another_endpoints_answer(mesh, rpc_channel):
    # no retry written anywhere: Istio's default (2 retries on connect-failure,
    # refused-stream, unavailable, cancelled) retries the UNAVAILABLE of flaky's `bad`
    answers = [_call(rpc_channel, f"/meshcore.test.Flaky/Call{i}") for i in range(10)]
    assert {a[0] for a in answers} == {"one"}, answers
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/meshcore.test.Flaky/' in line]
    assert len(lines) == 10 and all('grpc.status="0"' in line for line in lines), lines
    assert any("attempts=2" in line for line in lines), lines


def test_without_a_retry_stanza_a_503_goes_back_to_the_client(mesh):
    # Istio's default retries leave 503 out (since 1.24): what makes the test above pass is its retry
    answers = get(mesh, mesh.echo, [f"/noretry/{i}" for i in range(10)])
    failed = [a for a in answers if a.status == 503]
    assert failed and all(a.backend == "bad" for a in failed), answers
    assert not any("attempts=" in line for line in access_lines(mesh, "/noretry/"))


def test_a_virtual_service_retry_on_5xx_turns_a_failing_endpoints_answers_into_200s(mesh):
    _retried(mesh, mesh.echo_vs, "/vsretry/get", "shop.echo-vs.0")


# -- faults --------------------------------------------------------------------------------------

def test_an_abort_fault_of_50_percent_aborts_within_binomial_bounds_before_the_backend(mesh):
    answers = get(mesh, mesh.echo_vs, [f"/abort/{i}" for i in range(400)], connections=8)
    aborted = [a for a in answers if a.status == 503]
    passed = [a for a in answers if a.status == 200]
    assert len(aborted) + len(passed) == 400, [a for a in answers if a.status not in (200, 503)][:5]
    lo, hi = binomial_interval(400, 0.5)
    assert lo <= len(aborted) <= hi, (len(aborted), lo, hi)
    assert all(a.backend is None and a.body == "fault filter abort" for a in aborted), aborted[:3]
    # an aborted request never reached the backend
    assert sorted(r["path"] for r in seen(mesh.one, "/abort/")) == sorted(a.path for a in passed)
    flagged = [line for line in access_lines(mesh, "/abort/") if 'response_flags="FI"' in line]
    assert len(flagged) == len(aborted), flagged[:2]


def test_a_delay_fault_holds_each_request_for_its_duration(mesh):
    answers = get(mesh, mesh.echo_vs, [f"/delay/{i}" for i in range(3)])
    assert all(a.status == 200 and a.backend == "one" for a in answers), answers
    assert all(0.4 <= a.elapsed < 2.0 for a in answers), [a.elapsed for a in answers]
    durations = [int(re.search(r'duration="(\d+)ms"', line).group(1)) for line in access_lines(mesh, "/delay/")]
    assert len(durations) == 3 and min(durations) >= 400, durations


# -- mirrors -------------------------------------------------------------------------------------

def _mirrored(mesh, host, path, *, method="GET", body=b""):
    answer = get(mesh, host, [path], method=method, body=body)[0]
    assert answer.status == 200 and answer.backend == "one", answer
    deadline = time.monotonic() + 3
    while not seen(mesh.two, path):
        assert time.monotonic() < deadline, f"{path} was not mirrored to echo-two"
        time.sleep(0.05)
    # Envoy sends the copy with the authority suffixed -shadow
    copy = seen(mesh.two, path)[0]
    assert copy["headers"]["host"].endswith("-shadow") and copy["method"] == method, copy
    assert copy["body"] == body.decode(), copy


def test_a_mirror_gets_the_body_of_the_request_it_copies(mesh):
    _mirrored(mesh, mesh.echo, "/mirror/posted", method="POST", body=b"the payload")


def test_an_httproute_request_mirror_sends_a_copy_to_the_mirror_backend(mesh):
    _mirrored(mesh, mesh.echo, "/mirror/gateway")


def test_a_virtual_service_mirror_sends_a_copy_to_the_mirror_host(mesh):
    _mirrored(mesh, mesh.echo_vs, "/mirror/istio")


# -- gRPC ----------------------------------------------------------------------------------------

def _channel(mesh, vip):
    """A grpcio channel to vip:50051 from the client workload, through node-a."""
    forwarder = subprocess.Popen([sys.executable, str(SUPPORT / "socks_forwarder.py"),
                                  "--socks", f"{mesh.node['node-a']}:15080", "--source", mesh.client,
                                  "--target", f"{vip}:50051"], stdout=subprocess.PIPE, text=True)
    try:
        listening = forwarder.stdout.readline().split()
        assert listening and listening[0] == "listening", listening
        with grpc.insecure_channel(listening[1], options=[("grpc.enable_http_proxy", 0)]) as channel:
            yield channel
    finally:
        forwarder.terminate()
        forwarder.wait(10)


@pytest.fixture(scope="module")
def rpc_channel(mesh):
    yield from _channel(mesh, mesh.rpc)


@pytest.fixture(scope="module")
def rpc_vs_channel(mesh):
    yield from _channel(mesh, mesh.rpc_vs)


def _call(channel, method, metadata=()):
    """(the backend that answered, the method it served, the metadata it received)"""
    answer, call = channel.unary_unary(method).with_call(b"ping", metadata=metadata, timeout=10)
    echo = json.loads(answer)
    assert dict(call.trailing_metadata())["x-backend"] == echo["backend"] and echo["request"] == "ping", echo
    return echo["backend"], echo["method"], echo["metadata"]


def test_a_grpcroute_sends_one_method_to_one_service_and_the_rest_to_another(mesh, rpc_channel):
    assert _call(rpc_channel, "/meshcore.test.Echo/Special")[:2] == ("two", "/meshcore.test.Echo/Special")
    assert _call(rpc_channel, "/meshcore.test.Echo/Unary")[:2] == ("one", "/meshcore.test.Echo/Unary")
    # the method match names its service too: the same method of another service is not it
    assert _call(rpc_channel, "/other.Echo/Special")[:2] == ("one", "/other.Echo/Special")
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/meshcore.test.Echo/Special"' in line]
    assert lines and 'route="shop.rpc-routes.0"' in lines[-1] and 'grpc.status="0"' in lines[-1], lines


def test_a_grpcroute_header_match_chooses_its_backend(mesh, rpc_channel):
    backend, _, metadata = _call(rpc_channel, "/meshcore.test.Echo/Unary", (("x-variant", "two"),))
    assert backend == "two" and metadata["x-variant"] == "two", metadata
    assert _call(rpc_channel, "/meshcore.test.Echo/Unary", (("x-variant", "three"),))[0] == "one"


def test_a_grpcroute_request_header_modifier_sets_adds_and_removes_metadata(mesh, rpc_channel):
    backend, _, metadata = _call(rpc_channel, "/meshcore.test.Echo/Unary", (
        ("x-test-case", "modify"), ("x-header-set", "to-be-overwritten"), ("x-header-add", "existing"),
        ("x-header-remove", "to-be-removed"), ("some-other-header", "kept")))
    assert backend == "one", metadata
    assert metadata["x-header-set"] == "set-overwrites-values" and metadata["some-other-header"] == "kept"
    assert metadata["x-header-add"] == "existing,add-appends-values" and "x-header-remove" not in metadata, metadata


def test_a_grpcroute_70_30_split_holds_within_binomial_bounds_and_weight_0_takes_nothing(mesh, rpc_channel):
    answers = [_call(rpc_channel, f"/meshcore.test.Weighted/Call{i % 3}")[0] for i in range(300)]
    assert set(answers) <= {"one", "two"}, set(answers)
    lo, hi = binomial_interval(300, 0.7)          # 166..250
    assert lo <= answers.count("one") <= hi, (answers.count("one"), lo, hi)


def test_a_virtual_service_aborts_a_grpc_method_with_its_grpc_status_and_matches_metadata(mesh, rpc_vs_channel):
    with pytest.raises(grpc.RpcError) as aborted:
        _call(rpc_vs_channel, "/meshcore.test.Echo/Abort")
    assert aborted.value.code() == grpc.StatusCode.UNAVAILABLE, aborted.value
    assert _call(rpc_vs_channel, "/meshcore.test.Echo/Unary")[0] == "one"
    assert _call(rpc_vs_channel, "/meshcore.test.Echo/Unary", (("x-variant", "two"),))[0] == "two"
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/meshcore.test.Echo/Abort"' in line]
    assert len(lines) == 1 and 'response_flags="FI"' in lines[0] and 'grpc.status="14"' in lines[0], lines
    assert 'dst.workload=' not in lines[0], lines          # answered by the waypoint, sent nowhere


# -- local rate limits per client ----------------------------------------------------------------

def test_a_per_source_rate_limit_keeps_a_bucket_for_each_client_identity(mesh):
    first = get(mesh, mesh.echo, [f"/limited/a{i}" for i in range(3)])
    other = get(mesh, mesh.echo, [f"/limited/b{i}" for i in range(2)], source=mesh.client2)
    again = get(mesh, mesh.echo, ["/limited/a3"])
    assert [a.status for a in first + other + again] == [200, 200, 429, 200, 200, 429], first + other + again
    assert first[0].headers["x-ratelimit-limit"] == "2" and other[1].headers["x-ratelimit-remaining"] == "0"
    assert first[2].body == "local_rate_limited"
    # the access log names each request's client by its identity
    lines = access_lines(mesh, "/limited/")
    assert sum('response_flags="RL"' in line for line in lines) == 2
    assert all("sa/client2" in line for line in lines if "/limited/b" in line), lines
    # another rule of the same route is not limited
    assert {a.status for a in get(mesh, mesh.echo, [f"/split50/after{i}" for i in range(4)])} == {200}


def test_a_grpcroute_rules_rate_limit_answers_unavailable_once_spent(mesh, rpc_channel):
    assert _call(rpc_channel, "/meshcore.test.Metered/First")[0] == "two"
    with pytest.raises(grpc.RpcError) as limited:
        _call(rpc_channel, "/meshcore.test.Metered/Second")
    assert limited.value.code() == grpc.StatusCode.UNAVAILABLE, limited.value
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/meshcore.test.Metered/Second"' in line]
    assert len(lines) == 1 and 'response_flags="RL"' in lines[0] and "dst.workload=" not in lines[0], lines
    # the other rules of the route keep their calls
    assert _call(rpc_channel, "/meshcore.test.Echo/Unary")[0] == "one"


# -- refused configuration -----------------------------------------------------------------------

BAD_ROUTES = {
    "a regular expression RE2 refuses": ("""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(?=lookahead)"}}]
    backendRefs: [{name: echo-two, port: 80}]
  - matches: [{path: {value: /refused}}]
    backendRefs: [{name: echo-two, port: 80}]
""", "spec.rules[0].matches[0].path.value"),
    "an unknown filter": ("""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-filter, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters: [{type: RequestTeleport}]
    backendRefs: [{name: echo-two, port: 80}]
  - matches: [{path: {value: /refused}}]
    backendRefs: [{name: echo-two, port: 80}]
""", "spec.rules[0].filters[0].type"),
    "a Service backend without port": ("""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-backend, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: echo-two}]
  - matches: [{path: {value: /refused}}]
    backendRefs: [{name: echo-two, port: 80}]
""", "spec.rules[0].backendRefs[0].port"),
}


def test_an_invalid_route_written_while_running_is_refused_and_the_routes_in_force_stay(mesh):
    original = mesh.config.read_text()
    version = config_version(mesh)
    try:
        for what, (document, field) in BAD_ROUTES.items():
            refusals = mesh.log("waypoint").count("configuration refused")
            staged = mesh.config.with_suffix(".next")
            staged.write_text(original + document)
            os.replace(staged, mesh.config)
            deadline = time.monotonic() + 10
            while mesh.log("waypoint").count("configuration refused") == refusals:
                assert time.monotonic() < deadline, (what, mesh.log("waypoint")[-2000:])
                time.sleep(0.05)
            refusal = [line for line in mesh.log("waypoint").splitlines() if "configuration refused" in line][-1]
            assert str(mesh.config) in refusal and field in refusal, (what, refusal)
            assert config_version(mesh) == version, what
            # the routes in force still decide: none of the refused route's rules applies
            # (its valid one would send /refused to echo-two), the others route as before
            answers = get(mesh, mesh.echo, ["/refused", *(f"/split50/kept{i}" for i in range(4))])
            assert answers[0].status == 404 and answers[0].backend is None, (what, answers[0])
            assert all(a.status == 200 and a.echo["headers"].get("x-split") == "50" for a in answers[1:]), \
                (what, answers)
    finally:
        staged = mesh.config.with_suffix(".next")
        staged.write_text(original)
        os.replace(staged, mesh.config)
