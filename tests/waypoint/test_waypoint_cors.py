"""CORS through a waypoint process, and the service its request metrics name: the mesh
of tests/support/waypoint_mesh.py with two more workloads on node-b, `one` and `two`,
served by tests/support/echo_backends.py (each answer says which backend gave it; `GET
/__seen` lists what a backend received). The `site` service's VirtualService sends /api
to another service, `site-api` (workload `one`), with a corsPolicy, and everything else
to `site` itself (workload `two`); the `shop-front` service's HTTPRoute sends everything
to `front-api` (workload `one`) with Gateway API's CORS filter. Routes with response
header edits and CORS lead where the waypoint answers itself: a slow backend past the
route's timeout, `site-h2` (workload `one`'s HTTP/2 backend, which never answers a
request marked `x-stall-backend: one`), `site-down` (workload `ghost`, whose node is
gone: dialing it fails) and `site-empty` (no endpoint). Clients speak HTTP/1.1 through
node-a's SOCKS5, and HTTP/2 with prior knowledge for the HTTP/2 handler."""
import asyncio
import json
import re

import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

APP = "https://app.example"

CORS = """\
---
workloads:
- {{uid: c/one, name: one, namespace: shop, serviceAccount: one, workloadIps: ["{one}"], protocol: HBONE,
   node: node-b, services: {{"shop/site-api.shop.svc.cluster.local": {{80: 8080}},
                             "shop/site-h2.shop.svc.cluster.local": {{80: 8081}},
                             "shop/front-api.shop.svc.cluster.local": {{80: 8080}}}}}}
- {{uid: c/ghost, name: ghost, namespace: shop, serviceAccount: one, workloadIps: ["{ghost}"], protocol: HBONE,
   node: node-c, services: {{"shop/site-down.shop.svc.cluster.local": {{80: 8080}}}}}}
- {{uid: c/two, name: two, namespace: shop, serviceAccount: two, workloadIps: ["{two}"], protocol: HBONE,
   node: node-b, services: {{"shop/site.shop.svc.cluster.local": {{80: 8080}},
                             "shop/shop-front.shop.svc.cluster.local": {{80: 8080}}}}}}
services:
- {{name: site, namespace: shop, hostname: site.shop.svc.cluster.local, vips: ["/{site}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: site-api, namespace: shop, hostname: site-api.shop.svc.cluster.local, vips: ["/{site_api}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
- {{name: shop-front, namespace: shop, hostname: shop-front.shop.svc.cluster.local, vips: ["/{front}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: front-api, namespace: shop, hostname: front-api.shop.svc.cluster.local, vips: ["/{front_api}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
- {{name: site-h2, namespace: shop, hostname: site-h2.shop.svc.cluster.local, vips: ["/{site_h2}"],
   ports: {{80: 8081}}, appProtocols: {{80: http2}}}}
- {{name: site-down, namespace: shop, hostname: site-down.shop.svc.cluster.local, vips: ["/{site_down}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
- {{name: site-empty, namespace: shop, hostname: site-empty.shop.svc.cluster.local, vips: ["/{site_empty}"],
   ports: {{80: 8080}}, appProtocols: {{80: http}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: site, namespace: shop}}
spec:
  hosts: [site]
  http:
  - name: api
    match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: site-api}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "{app}"}}, {{regex: "https://[a-z]+[.]partner[.]example"}}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-token]
      exposeHeaders: [x-backend]
      maxAge: 1h
      allowCredentials: true
  - name: strict
    match: [{{uri: {{prefix: /strict}}}}]
    route: [{{destination: {{host: site-api}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "{app}"}}], allowMethods: [POST], unmatchedPreflights: IGNORE}}
  - name: slow
    match: [{{uri: {{prefix: /slow}}}}]
    timeout: 300ms
    headers: {{response: {{set: {{x-route: slow}}, remove: [x-backend]}}}}
    route: [{{destination: {{host: site-api}}, headers: {{response: {{add: {{x-destination: site-api}}}}}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "{app}"}}], allowMethods: [GET], exposeHeaders: [x-route]}}
  - name: h2
    match: [{{uri: {{prefix: /h2}}}}]
    timeout: 300ms
    headers: {{response: {{set: {{x-route: h2}}, remove: [x-backend]}}}}
    route: [{{destination: {{host: site-h2}}, headers: {{response: {{add: {{x-destination: site-h2}}}}}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "{app}"}}], allowMethods: [GET], exposeHeaders: [x-route]}}
  - name: down
    match: [{{uri: {{prefix: /down}}}}]
    timeout: 300ms
    headers: {{response: {{set: {{x-route: down}}, remove: [x-backend]}}}}
    route: [{{destination: {{host: site-down}}, headers: {{response: {{add: {{x-destination: site-down}}}}}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "{app}"}}], allowMethods: [GET], exposeHeaders: [x-route]}}
  - name: empty
    match: [{{uri: {{prefix: /empty}}}}]
    timeout: 300ms
    headers: {{response: {{set: {{x-route: empty}}, remove: [x-backend]}}}}
    route: [{{destination: {{host: site-empty}}, headers: {{response: {{add: {{x-destination: site-empty}}}}}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "{app}"}}], allowMethods: [GET], exposeHeaders: [x-route]}}
  - route: [{{destination: {{host: site}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: front, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: shop-front, port: 80}}]
  rules:
  - filters:
    - type: CORS
      cors: {{allowOrigins: ["https://*.example"], allowMethods: [GET, DELETE], exposeHeaders: [x-backend]}}
    backendRefs: [{{name: front-api, port: 80}}]
  - name: slow
    matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 300ms}}
    filters:
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-route, value: front-slow}}]}}}}
    - type: CORS
      cors: {{allowOrigins: ["https://*.example"], allowMethods: [GET]}}
    backendRefs: [{{name: front-api, port: 80}}]
  - name: spent
    matches: [{{path: {{type: PathPrefix, value: /spent}}}}]
    filters:
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-route, value: front-spent}}]}}}}
    - type: CORS
      cors: {{allowOrigins: ["https://*.example"], allowMethods: [GET]}}
    backendRefs: [{{name: front-api, port: 80}}]
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: front-spent, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: front, sectionName: spent}}]
  tokenBucket: {{maxTokens: 1, tokensPerFill: 1, fillInterval: 60s}}
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: front-slow, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: front, sectionName: slow}}]
  tokenBucket: {{maxTokens: 100, tokensPerFill: 100, fillInterval: 60s}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-cors"))
    n = m.web.split(".")[1]
    m.one, m.two = f"127.{n}.3.1", f"127.{n}.3.2"
    m.ghost = f"127.{n}.3.9"
    m.site, m.site_api, m.front, m.front_api, m.site_h2, m.site_down, m.site_empty = (
        f"127.{n}.11.{i}" for i in range(1, 8))
    m.config.write_text(m.config.read_text() + CORS.format(
        one=m.one, two=m.two, ghost=m.ghost, site=m.site, site_api=m.site_api, front=m.front, front_api=m.front_api,
        site_h2=m.site_h2, site_down=m.site_down, site_empty=m.site_empty, waypoint=m.waypoint, app=APP))
    with running(m, ["--http", f"one={m.one}:8080", "--http", f"two={m.two}:8080", "--h2", f"one={m.one}:8081"]):
        yield m


async def _exchange(reader, writer, host, method, path, headers):
    writer.write((f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n"
                  + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(head[0].split()[1]), fields, body


def send(mesh, host, requests):
    """(method, path, headers) each, in order on one kept-alive connection: (status,
    headers, body) each."""
    async def run():
        reader, writer = await mesh.socks5(host, 80)
        try:
            return [await asyncio.wait_for(_exchange(reader, writer, host, *r), 10) for r in requests]
        finally:
            writer.close()
    return asyncio.run(run())


def preflight(origin, method="PUT", **extra):
    return [("origin", origin), ("access-control-request-method", method), *extra.items()]


def seen(address, prefix):
    status, body = LocalMesh.http_get(address, 8080, "/__seen")[:2]
    assert status == 200, body
    return [r for r in json.loads(body) if r["path"].startswith(prefix)]


def access_lines(mesh, path):
    return [line for line in mesh.log("waypoint").splitlines() if f'http.path="{path}"' in line]


def cors_headers(fields):
    return {k: v for k, v in fields.items() if k.startswith("access-control-")}


def test_a_preflight_from_an_allowed_origin_is_answered_by_the_waypoint_and_never_reaches_the_backend(mesh):
    (status, fields, body), = send(mesh, mesh.site, [("OPTIONS", "/api/orders", preflight(
        APP, **{"access-control-request-headers": "x-token"}))])
    assert (status, body) == (200, b""), (status, fields, body)
    assert cors_headers(fields) == {
        "access-control-allow-origin": APP, "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET,PUT", "access-control-allow-headers": "x-token",
        "access-control-max-age": "3600"}, fields
    assert "x-backend" not in fields and "content-type" not in fields, fields
    assert seen(mesh.one, "/api/orders") == []
    lines = access_lines(mesh, "/api/orders")
    assert len(lines) == 1 and "http.status=200" in lines[0] and 'route="shop.site.api"' in lines[0], lines


def test_a_preflight_from_another_origin_goes_on_to_the_backend(mesh):
    (status, fields, body), = send(mesh, mesh.site, [("OPTIONS", "/api/forwarded", preflight("https://evil.example"))])
    assert status == 200 and fields.get("x-backend") == "one", (status, fields, body)
    assert cors_headers(fields) == {}, fields
    (got,) = seen(mesh.one, "/api/forwarded")
    assert got["method"] == "OPTIONS" and got["headers"]["origin"] == "https://evil.example"


def test_ignore_answers_a_preflight_from_another_origin_without_allowing_it(mesh):
    (status, fields, body), = send(mesh, mesh.site, [("OPTIONS", "/strict/x", preflight("https://evil.example"))])
    assert status == 200 and "x-backend" not in fields, fields
    assert cors_headers(fields) == {"access-control-allow-methods": "POST"}, fields
    assert seen(mesh.one, "/strict/x") == []


def test_an_actual_request_from_an_allowed_origin_gets_the_cors_headers_on_the_backends_answer(mesh):
    answers = send(mesh, mesh.site, [("GET", "/api/items", [("origin", APP)]),
                                     ("PUT", "/api/items", [("origin", "https://shop.partner.example")]),
                                     ("GET", "/api/items", [("origin", "https://evil.example")]),
                                     ("GET", "/api/items", [])])
    assert [a[0] for a in answers] == [200] * 4 and all(a[1]["x-backend"] == "one" for a in answers), answers
    assert cors_headers(answers[0][1]) == {"access-control-allow-origin": APP,
                                           "access-control-allow-credentials": "true",
                                           "access-control-expose-headers": "x-backend"}, answers[0][1]
    assert cors_headers(answers[1][1])["access-control-allow-origin"] == "https://shop.partner.example"
    assert cors_headers(answers[2][1]) == {} and cors_headers(answers[3][1]) == {}
    # the backend saw the request as sent, Origin included
    assert [r["headers"].get("origin") for r in seen(mesh.one, "/api/items")] == [
        APP, "https://shop.partner.example", "https://evil.example", None]


def test_a_route_without_a_cors_policy_leaves_preflights_to_the_backend(mesh):
    (status, fields, _), = send(mesh, mesh.site, [("OPTIONS", "/plain", preflight(APP))])
    assert status == 200 and fields.get("x-backend") == "two" and cors_headers(fields) == {}, fields


def test_an_httproute_cors_filter_answers_preflights_and_marks_responses(mesh):
    answers = send(mesh, mesh.front, [("OPTIONS", "/cart", preflight("https://www.example", "DELETE")),
                                      ("OPTIONS", "/cart", preflight("https://www.other")),
                                      ("GET", "/cart", [("origin", "https://www.example")]),
                                      ("GET", "/cart", [("origin", "https://www.other")])])
    (s1, f1, _), (s2, f2, _), (s3, f3, _), (s4, f4, _) = answers
    assert s1 == 200 and "x-backend" not in f1 and cors_headers(f1) == {
        "access-control-allow-origin": "https://www.example", "access-control-allow-methods": "GET,DELETE",
        "access-control-max-age": "5"}, f1
    # istiod converts Gateway API's filter with unmatched preflights answered, not forwarded
    assert s2 == 200 and "x-backend" not in f2 and "access-control-allow-origin" not in f2, f2
    assert f3["x-backend"] == "one" and cors_headers(f3) == {
        "access-control-allow-origin": "https://www.example", "access-control-expose-headers": "x-backend"}, f3
    assert f4["x-backend"] == "one" and cors_headers(f4) == {}, f4
    assert [r["method"] for r in seen(mesh.one, "/cart")] == ["GET", "GET"]


def test_an_http2_client_gets_the_same_preflight_answer_and_response_headers(mesh):
    async def run():
        reader, writer = await mesh.socks5(mesh.site, 80)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        got = []
        for method, path, headers in (("OPTIONS", "/api/h2", preflight(APP)), ("GET", "/api/h2", [("origin", APP)])):
            sid = open_request(ep, method, path, f"{mesh.site}:80", headers, end=True)
            got.append(await asyncio.wait_for(Received().collect(ep.queue(sid)), 10))
        writer.close()
        return got
    pre, actual = asyncio.run(run())
    pre_fields = {n.decode(): v.decode() for n, v in pre.response[1]}
    assert pre.response[0] == 200 and bytes(pre.body) == b"" and "x-backend" not in pre_fields, pre.response
    assert pre_fields["access-control-allow-methods"] == "GET,PUT" and "content-type" not in pre_fields, pre_fields
    fields = {n.decode(): v.decode() for n, v in actual.response[1]}
    assert fields["x-backend"] == "one" and fields["access-control-allow-origin"] == APP, fields
    assert [r["method"] for r in seen(mesh.one, "/api/h2")] == ["GET"]


def _series(metrics, **labels):
    """The istio_requests_total series carrying every one of `labels`."""
    out = []
    for line in metrics.splitlines():
        if line.startswith("istio_requests_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            out.append(line)
    return out


def test_request_metrics_and_access_lines_name_the_service_the_route_sent_to(mesh):
    send(mesh, mesh.site, [("GET", "/api/metered", []), ("GET", "/metered", [])])
    send(mesh, mesh.front, [("GET", "/metered", [])])
    metrics = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")[1]
    # a VirtualService route to another service: that service, as Envoy reads it from the cluster
    assert _series(metrics, destination_service="site-api.shop.svc.cluster.local",
                   destination_service_name="site-api", destination_service_namespace="shop",
                   destination_workload="one", response_code="200"), metrics
    # the route back to the service itself, and an HTTPRoute's backendRef to another service
    assert _series(metrics, destination_service="site.shop.svc.cluster.local", destination_service_name="site",
                   destination_workload="two", response_code="200"), metrics
    assert _series(metrics, destination_service="front-api.shop.svc.cluster.local",
                   destination_service_name="front-api", destination_workload="one"), metrics
    # nothing the waypoint sent to `one` is counted under the service the client addressed
    assert not _series(metrics, destination_service_name="site", destination_workload="one"), metrics
    assert not _series(metrics, destination_service_name="shop-front"), metrics
    (line,) = access_lines(mesh, "/api/metered")
    assert 'dst.service="site-api.shop.svc.cluster.local"' in line and 'dst.workload="one"' in line, line
    (line,) = [l for l in access_lines(mesh, "/metered") if 'dst.workload="two"' in l]
    assert 'dst.service="site.shop.svc.cluster.local"' in line, line
    # a preflight answered for a route names that route's backend too
    assert re.search(r'istio_requests_total\{[^}]*destination_service_name="site-api"[^}]*response_code="200"',
                     metrics)


# -- the waypoint's own answers once a route took the request -------------------------------------

def _route_marks(fields):
    """What a route's response edits and CORS policy put on an answer."""
    return {k: v for k, v in fields.items() if k in ("x-route", "x-destination", "x-backend")
            or k.startswith("access-control-") or k.startswith("x-ratelimit-")}


def _failed(route, destination, origin=APP):
    marks = {"x-route": route, "x-destination": destination}
    if origin:
        marks.update({"access-control-allow-origin": origin, "access-control-expose-headers": "x-route"})
    return marks


def test_the_waypoints_failure_answers_carry_the_routes_response_headers_and_cors_for_an_http1_client(mesh):
    answers = send(mesh, mesh.site, [
        ("GET", "/slow/h1", [("origin", APP), ("x-delay-ms", "1500")]),          # the route's timeout
        ("GET", "/h2/h1", [("origin", APP), ("x-stall-backend", "one")]),        # HTTP/2 backend, no answer
        ("GET", "/down/h1", [("origin", APP)]),                                  # the endpoint cannot be dialed
        ("GET", "/empty/h1", [("origin", APP)]),                                 # no endpoint at all
        ("GET", "/slow/h1-other", [("origin", "https://evil.example"), ("x-delay-ms", "1500")])])
    assert [(status, body) for status, _, body in answers] == [
        (504, b"upstream request timeout"), (504, b"upstream request timeout"),
        (503, b"upstream connect error"), (503, b"no healthy upstream"), (504, b"upstream request timeout")], answers
    got = [_route_marks(fields) for _, fields, _ in answers]
    assert got == [_failed("slow", "site-api"), _failed("h2", "site-h2"), _failed("down", "site-down"),
                   _failed("empty", "site-empty"), _failed("slow", "site-api", origin=None)], got
    flags = [re.search(r'response_flags="([^"]*)"', line).group(1)
             for path in ("/slow/h1", "/h2/h1", "/down/h1", "/empty/h1") for line in access_lines(mesh, path)]
    # the endpoint that cannot be dialed: Istio's default policy retries the connect
    # failure twice, then UF,URX as Envoy logs it
    assert flags == ["UT", "UT", "UF,URX", "UH"], flags


def test_the_waypoints_failure_answers_carry_the_routes_response_headers_and_cors_for_http2_and_grpc(mesh):
    grpc_call = [("origin", APP), ("content-type", "application/grpc"), ("te", "trailers")]

    async def run():
        reader, writer = await mesh.socks5(mesh.site, 80)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        got = []
        for method, path, headers in (("GET", "/slow/h2c", [("origin", APP), ("x-delay-ms", "1500")]),
                                      ("GET", "/h2/h2c", [("origin", APP), ("x-stall-backend", "one")]),
                                      ("GET", "/down/h2c", [("origin", APP)]),
                                      ("POST", "/down/grpc.Echo/Call", grpc_call),
                                      ("POST", "/empty/grpc.Echo/Call", grpc_call)):
            sid = open_request(ep, method, path, f"{mesh.site}:80", headers, end=True)
            got.append(await asyncio.wait_for(Received().collect(ep.queue(sid)), 10))
        writer.close()
        return got
    answers = asyncio.run(run())
    fields = [{n.decode(): v.decode() for n, v in a.response[1]} for a in answers]
    assert [a.response[0] for a in answers] == [504, 504, 503, 200, 200], [a.response for a in answers]
    # a gRPC call answered Trailers-Only: the status in the one header block, the route's headers beside it
    assert [(f.get("grpc-status"), bytes(a.body)) for f, a in zip(fields[3:], answers[3:])] == [("14", b"")] * 2
    assert [_route_marks(f) for f in fields] == [
        _failed("slow", "site-api"), _failed("h2", "site-h2"), _failed("down", "site-down"),
        _failed("down", "site-down"), _failed("empty", "site-empty")], fields


def test_an_httproutes_timeout_answer_carries_its_header_modifier_cors_and_rate_limit_headers(mesh):
    (status, fields, body), = send(mesh, mesh.front, [
        ("GET", "/slow/timed-out", [("origin", "https://www.example"), ("x-delay-ms", "1500")])])
    assert (status, body) == (504, b"upstream request timeout"), (status, fields, body)
    marks = _route_marks(fields)
    assert marks.pop("x-ratelimit-limit") == "100" and {"x-ratelimit-remaining", "x-ratelimit-reset"} <= set(marks)
    assert {k: v for k, v in marks.items() if not k.startswith("x-ratelimit-")} == {
        "x-route": "front-slow", "access-control-allow-origin": "https://www.example"}, fields


def test_a_rate_limits_429_carries_the_routes_header_modifier_and_cors(mesh):
    # Envoy finalizes the local rate limit filter's reply with the route entry's response
    # headers, and its CORS filter adds the allowed origin's
    answers = send(mesh, mesh.front, [("GET", f"/spent/{i}", [("origin", "https://www.example")]) for i in range(2)])
    assert [status for status, _, _ in answers] == [200, 429], answers
    marks = _route_marks(answers[1][1])
    assert marks.pop("x-ratelimit-limit") == "1"
    assert {k: v for k, v in marks.items() if not k.startswith("x-ratelimit-")} == {
        "x-route": "front-spent", "access-control-allow-origin": "https://www.example"}, answers[1]
