"""HTTPRoutes attached to a service, applied by a waypoint process
(tests/support/waypoint_mesh.py plus a second backend, web-v2, on node-b): backend
choice, URL rewrites, header modifiers both ways, redirects, 404 for what no rule
matches, the route's timeout, and the same for HTTP/2 clients. Clients are curl and
python-hyper h2 through node-a's SOCKS5."""
import asyncio
import subprocess
import time

import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from test_waypoint_http2 import Backends
from waypoint_mesh import WaypointMesh

pytestmark = pytest.mark.timeout(120)

ROUTES = """\
---
workloads:
- {{uid: c/web2, name: web2, namespace: shop, serviceAccount: web2, workloadIps: ["{web2}"], protocol: HBONE,
   node: node-b, labels: {{version: v2}}, services: {{"shop/web-v2.shop.svc.cluster.local": {{80: 8080}},
                             "shop/web-v3.shop.svc.cluster.local": {{80: 8080}},
                             "shop/web-vs.shop.svc.cluster.local": {{80: 8080}},
                             "shop/web-limited.shop.svc.cluster.local": {{80: 8080}}}}}}
# an endpoint whose node is gone: dialing it fails at once (nothing listens there)
- {{uid: c/ghost, name: ghost, namespace: shop, serviceAccount: web2, workloadIps: ["{ghost}"], protocol: HBONE,
   node: node-c, services: {{"shop/web-v2.shop.svc.cluster.local": {{80: 8080}},
                             "shop/web-v3.shop.svc.cluster.local": {{80: 8080}}}}}}
services:
- {{name: web-v2, namespace: shop, hostname: web-v2.shop.svc.cluster.local, vips: ["/{vip2}"], ports: {{80: 8080}},
   appProtocols: {{80: http}}}}
- {{name: web-v3, namespace: shop, hostname: web-v3.shop.svc.cluster.local, vips: ["/{vip3}"], ports: {{80: 8080}}}}
- {{name: web-vs, namespace: shop, hostname: web-vs.shop.svc.cluster.local, vips: ["/{vip4}"], ports: {{80: 8080}},
   waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: web-limited, namespace: shop, hostname: web-limited.shop.svc.cluster.local, vips: ["/{vip5}"],
   ports: {{80: 8080}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: three-a-minute, namespace: shop}}
spec:
  targetRefs: [{{group: "", kind: Service, name: web-limited}}]
  tokenBucket: {{maxTokens: 3, tokensPerFill: 3, fillInterval: 60s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-vs, namespace: shop}}
spec:
  hosts: [web-vs]
  http:
  - match: [{{uri: {{prefix: /two/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: web-vs, subset: two}}}}]
  - match: [{{uri: {{exact: /abort}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web-vs}}}}]
  - match: [{{uri: {{exact: /redirect}}}}]
    redirect: {{uri: /new}}
  - match: [{{uri: {{exact: /slow}}}}]
    fault: {{delay: {{fixedDelay: 0.3s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web-vs}}}}]
  - match: [{{uri: {{exact: /nowhere}}}}]
    route: [{{destination: {{host: web-vs, subset: three}}}}]
  - route: [{{destination: {{host: web-vs}}}}]
    headers: {{response: {{set: {{x-vs: "yes"}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web-vs, namespace: shop}}
spec:
  host: web-vs
  subsets: [{{name: two, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web-v3, namespace: shop}}
spec:
  host: web-v3.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
    # one request at a time: a request that did not give its place back would refuse the next (503 UO)
    connectionPool: {{http: {{http2MaxRequests: 1}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-routes, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
    filters:
    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: v2}}],
                                                             remove: [x-received-bytes]}}}}
    backendRefs: [{{name: web-v2, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}},
                                                         statusCode: 301}}}}]
  - matches: [{{path: {{value: /web}}}}, {{headers: [{{name: x-canary, value: "yes"}}]}}]
    backendRefs: [{{name: web, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v3}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: web-v3, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /mirrored}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: web, port: 82}}}}}}]
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h2-routes, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 81}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}, {{path: {{type: Exact, value: /slow-drain}}}}]
    timeouts: {{request: 100ms}}
    backendRefs: [{{name: web, port: 81}}]
  - backendRefs: [{{name: web, port: 81}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h1-to-h2-routes, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 82}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /fail-once}}}}]
    retry: {{attempts: 1, codes: [503]}}
    backendRefs: [{{name: web, port: 82}}]
  - matches: [{{path: {{type: Exact, value: /slow-drain}}}}]
    timeouts: {{request: 100ms}}
    backendRefs: [{{name: web, port: 82}}]
  - backendRefs: [{{name: web, port: 82}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-routes"))
    octet = m.web.split(".")[1]
    m.web2, m.vip2 = f"127.{octet}.2.2", f"127.{octet}.10.2"
    m.config.write_text(m.config.read_text() + ROUTES.format(web2=m.web2, vip2=m.vip2, vip3=f"127.{octet}.10.3",
                                                             vip4=f"127.{octet}.10.4", vip5=f"127.{octet}.10.5",
                                                             waypoint=m.waypoint,
                                                             ghost=f"127.{octet}.2.9"))
    try:
        m._spawn("web2", ["-m", "meshcore.localworkload", "--name", "web2", "--http", f"{m.web2}:8080"])
        m.start()
        deadline = time.monotonic() + 10
        while LocalMesh.http_get(m.web2, 8080, "/")[0] != 200:
            assert time.monotonic() < deadline, m.log("web2")
            time.sleep(0.05)
    except BaseException:
        m.stop()
        raise
    yield m
    codes = m.stop()
    assert set(codes.values()) == {0}, m.log("waypoint")[-3000:]


@pytest.fixture(scope="module")
def backends(mesh):
    b = Backends(mesh)
    try:
        yield b.start()
    finally:
        b.stop()


def curl(mesh, *args):
    got = subprocess.run(["curl", "-sS", "-m", "20", "-i", "--interface", mesh.client, "--socks5",
                          f"{mesh.node['node-a']}:15080", *args], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    head, _, body = got.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    return int(lines[0].split()[1]), {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}, body


@pytest.mark.needs_tool("curl")
def test_a_prefix_goes_to_another_backend_rewritten_with_response_headers_edited(mesh):
    status, headers, body = curl(mesh, f"http://{mesh.vip}/v2/items?page=2")
    assert status == 200, (headers, body)
    # web2 got the rewritten path (the query kept); its answer came back edited
    assert body.startswith("hello from web2: GET /items?page=2 HTTP/1.1 from "), body
    assert headers["x-route"] == "v2" and "x-received-bytes" not in headers, headers


@pytest.mark.needs_tool("curl")
def test_matches_are_ored_and_a_request_no_rule_matches_is_404(mesh):
    assert curl(mesh, f"http://{mesh.vip}/web/a")[2].startswith("hello from web: GET /web/a ")
    assert curl(mesh, "-H", "x-canary: yes", f"http://{mesh.vip}/other")[2].startswith("hello from web: GET /other ")
    status, _, body = curl(mesh, f"http://{mesh.vip}/other")
    assert status == 404 and body == ""
    # the policies decide before the routes: a denied path is 403 whatever the routes say
    assert curl(mesh, f"http://{mesh.vip}/admin")[0] == 403


@pytest.mark.needs_tool("curl")
def test_a_redirect_is_answered_by_the_waypoint(mesh):
    status, headers, _ = curl(mesh, "-H", "host: web.shop", f"http://{mesh.vip}/old?x=1")
    assert status == 301 and headers["location"] == "http://web.shop/new?x=1", headers


def test_an_http2_client_is_routed_and_translated_for_the_http1_backend(mesh):
    async def run():
        reader, writer = await mesh.socks5(mesh.vip, 80)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        sids = [open_request(ep, "GET", path, f"{mesh.vip}:80", end=True) for path in ("/v2/h2", "/nothing")]
        got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s)) for s in sids)), 10)
        writer.close()
        return got
    routed, missing = asyncio.run(run())
    assert routed.response[0] == 200 and bytes(routed.body).startswith(b"hello from web2: GET /h2 HTTP/1.1")
    assert dict(routed.response[1])[b"x-route"] == b"v2"
    assert missing.response[0] == 404 and missing.ended


def test_the_routes_timeout_answers_504_before_the_backend_does(mesh, backends):
    async def run():
        reader, writer = await mesh.socks5(mesh.vip, 81)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        slow = open_request(ep, "GET", "/slow-drain", f"{mesh.vip}:81", end=True)
        fast = open_request(ep, "GET", "/fast", f"{mesh.vip}:81", end=True)
        got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s)) for s in (slow, fast))), 10)
        writer.close()
        return got
    started = time.monotonic()
    slow, fast = asyncio.run(run())
    assert slow.response[0] == 504 and bytes(slow.body) == b"upstream request timeout"
    assert time.monotonic() - started < 0.9           # the backend takes 1 s to answer /slow-drain
    assert fast.response[0] == 200 and b'"path": "/fast"' in bytes(fast.body)
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/slow-drain"' in line]
    assert len(lines) == 1 and 'response_flags="UT"' in lines[0] and 'route="shop.h2-routes.0"' in lines[0], lines


def test_the_access_line_names_the_route(mesh):
    log = mesh.log("waypoint")
    assert 'route="shop.web-routes.0"' in log and 'route="shop.web-routes.1"' in log, log[-2000:]


@pytest.mark.needs_tool("curl")
def test_the_routes_timeout_holds_for_an_http1_client_of_an_http2_backend(mesh, backends):
    # port 82 declares http2: the HTTP/1.1 request goes on as an HTTP/2 stream
    started = time.monotonic()
    status, _, body = curl(mesh, "--http1.1", f"http://{mesh.vip}:82/slow-drain")
    assert (status, body) == (504, "upstream request timeout") and time.monotonic() - started < 0.9
    status, _, body = curl(mesh, "--http1.1", f"http://{mesh.vip}:82/quick")
    assert status == 200 and '"path": "/quick"' in body


@pytest.mark.needs_tool("curl")
def test_a_failed_connection_is_retried_on_another_endpoint(mesh):
    # web-v2 has two endpoints, one unreachable: Istio's default retry policy
    # (connect-failure among its conditions) sends those requests to the other
    for i in range(6):
        status, _, body = curl(mesh, f"http://{mesh.vip}/v2/retry{i}")
        assert status == 200 and body.startswith(f"hello from web2: GET /retry{i} "), (status, body)
    retried = [line for line in mesh.log("waypoint").splitlines() if "/v2/retry" in line and "attempts=2" in line]
    # whichever requests met the unreachable endpoint first went on in their second attempt
    assert retried and all("dst.workload=\"web2\"" in line for line in retried), retried


@pytest.mark.needs_tool("curl")
def test_an_endpoint_that_failed_is_ejected_by_the_destination_rules_outlier_detection(mesh):
    curl(mesh, f"http://{mesh.vip}/v3/eject")        # round robin: one of two requests meets the ghost
    curl(mesh, f"http://{mesh.vip}/v3/eject")
    # consecutive5xxErrors: 1 ejected it for 60 s: no request tries it again
    for i in range(6):
        status, _, body = curl(mesh, f"http://{mesh.vip}/v3/after{i}")
        assert status == 200 and body.startswith("hello from web2"), (status, body)
    lines = [line for line in mesh.log("waypoint").splitlines() if "/v3/after" in line]
    assert len(lines) == 6 and not any("attempts=" in line for line in lines), lines


@pytest.mark.needs_tool("curl")
def test_a_virtual_service_routes_a_service_no_httproute_binds(mesh):
    vs = f"127.{mesh.web.split('.')[1]}.10.4"
    status, headers, body = curl(mesh, f"http://{vs}/two/items")
    assert status == 200 and body.startswith("hello from web2: GET /items HTTP/1.1"), (status, body)
    assert "x-vs" not in headers                      # the last route's header edit is not this one's
    status, headers, body = curl(mesh, f"http://{vs}/plain")
    assert status == 200 and headers["x-vs"] == "yes", headers
    assert curl(mesh, f"http://{vs}/abort")[0] == 418
    status, headers, _ = curl(mesh, "-H", "host: web-vs.shop", f"http://{vs}/redirect")
    assert status == 301 and headers["location"] == "http://web-vs.shop/new", headers
    # a subset the DestinationRule does not define: no cluster
    assert curl(mesh, f"http://{vs}/nowhere")[0] == 503
    started = time.monotonic()
    assert curl(mesh, f"http://{vs}/slow")[0] == 200 and time.monotonic() - started >= 0.3
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/abort"' in line]
    assert 'response_flags="FI"' in lines[0] and 'route="shop.web-vs.1"' in lines[0], lines


@pytest.mark.needs_tool("curl")
def test_a_local_rate_limit_answers_429_once_its_bucket_is_empty(mesh):
    limited = f"127.{mesh.web.split('.')[1]}.10.5"
    answers = [curl(mesh, f"http://{limited}/n{i}") for i in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 429, 429], [a[:2] for a in answers]
    assert answers[0][1]["x-ratelimit-limit"] == "3" and answers[2][1]["x-ratelimit-remaining"] == "0"
    assert answers[3][2] == "local_rate_limited" and int(answers[3][1]["x-ratelimit-reset"]) > 0
    lines = [line for line in mesh.log("waypoint").splitlines() if 'http.path="/n4"' in line]
    assert 'response_flags="RL"' in lines[0], lines


@pytest.mark.needs_tool("curl")
def test_a_mirror_gets_a_copy_and_the_client_the_backends_answer(mesh, backends):
    status, _, body = curl(mesh, "-H", "x-trace: m1", f"http://{mesh.vip}/mirrored")
    # the answer is the backend's (web's HTTP/1.1 server), not the mirror's
    assert status == 200 and body.startswith("hello from web: GET /mirrored "), body
    # the copy reached the mirror (the HTTP/2 backend on port 82), as Envoy shadows it
    deadline = time.monotonic() + 5
    while "/mirrored" not in backends.seen:
        assert time.monotonic() < deadline, backends.seen.keys()
        time.sleep(0.02)
    assert backends.seen["/mirrored"]["x-trace"] == "m1"


@pytest.mark.needs_tool("curl")
def test_an_http1_clients_retried_post_goes_again_with_its_body_to_an_http2_backend(mesh, backends):
    import hashlib
    status, _, body = curl(mesh, "--http1.1", "--data-binary", "the body", f"http://{mesh.vip}:82/fail-once/1")
    # the backend's 503 was retried: the second try brought the body again
    assert status == 200 and body.startswith(hashlib.sha256(b"the body").hexdigest()), (status, body)
    assert backends.bodies["/fail-once/1"] == [b"the body", b"the body"]
