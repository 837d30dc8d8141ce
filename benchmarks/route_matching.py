"""Gateway API route matching at scale, against baselines measured in the same run.

    pip install ".[bench]" && python benchmarks/route_matching.py [--routes 1000] [--repeat 3]

In process, 1,000 HTTPRoutes of 10 rules each (10,000 rules) attached to one service:

- decisions per second of `decide()` (the waypoint's whole route decision) and of
  `select_http` alone (the table's position indexes), beside a linear scan of the same
  table calling the same match function (`select.http_match_matches`) on every match in
  precedence order, which is what selection costs without the indexes; for requests
  whose first matching rule is early in the table, late in it, that no rule matches,
  and an even mix of the three (each implementation's answer is checked to be the same
  entry for every request);
- regular-expression-heavy tables (--regex-routes, 200 by default, of 10 rules each,
  every path a RegularExpression, one route in ten with a pattern that has no literal
  prefix): select_http with the regex index, with the regex paths tried one by one for
  every request (the index without its regex part: the unindexed baseline), and the linear
  scan; the same patterns as VirtualService routes, select_http_route (indexed by
  literal prefix) against select_http_route_linear (every match in order);
- building that view from YAML: parsing the files (load) and putting them in force in
  a store (resolve: the routes resolved, the table sorted and indexed);
- one route changed: `store.replace` of the whole set with one document different (the
  diff, that route resolved again, the service's table rebuilt), and the same through
  `replace_async` in an event loop (uvloop when installed, as the proxies run), with the
  longest stall of that loop while it applies (a task waking every millisecond; the
  same task's longest stall with nothing applying is the baseline), for the set already
  parsed and for the files read again as a file reload does; and the service every
  route names changed through `apply_async` (one resource, as the xDS client applies a
  delta), which resolves every route naming it again.

Through the waypoint, with wrk (HTTP/1.1 keep-alive, --connections, medians of --repeat
rounds): wrk → forwarder → node-a → waypoint → node-b → nginx, the mesh of
benchmarks/waypoint_http.py, with 0, 10 and --routes routes attached to web-l7 (a file
only the waypoint reads, changed between modes within each round; the last rule
matches every path, so every request is routed and answered 200). The waypoint's CPU
per request in each mode, and its ratio to 0 routes.

--quick: a smoke run (50 routes, one round, short runs). Needs wrk and nginx (Debian:
wrk, nginx-light) for the waypoint rows; --no-waypoint leaves them out.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from waypoint_load import NginxMesh, cpu_seconds, wrk  # noqa: E402

NAMESPACE = "shop"
SERVICE = "web-l7"
SERVICE_KEY = f"{NAMESPACE}/{SERVICE}.{NAMESPACE}.svc.cluster.local"
RULES_PER_ROUTE = 10

# the mesh the in-process view is built from: the service the routes attach to, its
# waypoint's workload and one endpoint (the routes' YAML follows it)
MESH = """\
workloads:
- {uid: c/web, name: web, namespace: shop, serviceAccount: web, workloadIps: ["10.0.2.1"], protocol: HBONE,
   node: node-b, services: {"shop/web-l7.shop.svc.cluster.local": {80: 8080}}}
- {uid: c/waypoint, name: waypoint, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.4.1"],
   protocol: HBONE, node: ""}
services:
- {name: web-l7, namespace: shop, hostname: web-l7.shop.svc.cluster.local, vips: ["/10.0.10.2"], ports: {80: 8080},
   waypoint: {destination: "/10.0.4.1", hboneMtlsPort: 15008}}
"""


# -- the routes -----------------------------------------------------------------------------------

def route_rules(i: int) -> list[str]:
    """Route i's ten rules, as YAML flow mappings: exact paths, path prefixes one to five
    segments deep, a prefix many routes share told apart by a header, header matches
    exact and by regular expression, methods, a query parameter, and for one route in
    five a regular-expression path."""
    backend = f"backendRefs: [{{name: {SERVICE}, port: 80}}]"
    if i % 5 == 0:
        last = (f"{{matches: [{{path: {{type: RegularExpression, value: '/files/r{i}/[0-9]+\\.(png|jpg)'}}}}], "
                f"{backend}}}")
    else:
        last = (f"{{matches: [{{path: {{type: PathPrefix, value: /r{i}/v3/u}}, "
                f"headers: [{{name: x-canary, value: 'yes'}}]}}], {backend}}}")
    return [
        f"{{matches: [{{path: {{type: Exact, value: /api/v1/r{i}/items}}, method: GET}}], {backend}}}",
        f"{{matches: [{{path: {{type: Exact, value: /r{i}/status}}}}], {backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}], {backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /r{i}/v1/orders}}, method: POST}}], "
        f"timeouts: {{request: 10s}}, {backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /r{i}/v2}}, headers: [{{name: x-version, value: '2'}}]}}], "
        f"filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-routed, value: r{i}}}]}}}}], "
        f"{backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /r{i}/v1}}, "
        f"headers: [{{name: x-tenant, type: RegularExpression, value: 't[0-9]+'}}]}}], {backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /shop/{i % 25}/cart}}, "
        f"headers: [{{name: x-user-group, value: g{i}}}]}}], {backend}}}",
        f"{{matches: [{{path: {{type: PathPrefix, value: /static/{i % 10}/assets/img/r{i}}}}}], "
        f"backendRefs: [{{name: {SERVICE}, port: 80, weight: 90}}, {{name: {SERVICE}, port: 80, weight: 10}}]}}",
        f"{{matches: [{{path: {{type: Exact, value: /r{i}/search}}, queryParams: [{{name: lang, value: en}}]}}], "
        f"{backend}}}",
        last,
    ]


def routes_yaml(n: int, *, catch_all: bool = False, changed: int | None = None) -> str:
    """n HTTPRoutes attached to web-l7, oldest first. catch_all: the last route's last
    rule has no matches (PathPrefix /: every request is routed). changed: that route's
    status path differs (the one-document change)."""
    docs = []
    for i in range(n):
        rules = route_rules(i)
        if i == changed:
            rules[1] = rules[1].replace(f"/r{i}/status", f"/r{i}/status-v2")
        if catch_all and i == n - 1:
            rules[-1] = f"{{backendRefs: [{{name: {SERVICE}, port: 80}}]}}"
        created = f"2024-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        docs.append("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                    f"metadata: {{name: r{i:04d}, namespace: {NAMESPACE}, creationTimestamp: '{created}'}}\n"
                    "spec:\n"
                    f"  parentRefs: [{{group: '', kind: Service, name: {SERVICE}, port: 80}}]\n"
                    "  rules:\n" + "".join(f"  - {r}\n" for r in rules))
    return "---\n".join(docs) if docs else "# no routes\n"


# -- requests -----------------------------------------------------------------------------------------

# what each regular expression of route_rules() is shown
_SAMPLES = {"t[0-9]+": "t42"}


def _sample(pattern: str) -> str:
    if pattern in _SAMPLES:
        return _SAMPLES[pattern]
    return pattern.replace("[0-9]+", "42").replace("\\.(png|jpg)", ".png")


def matching_request(match) -> tuple:
    """(method, path, query, headers) that `match` admits."""
    from meshcore.traffic.model import PathMatchType, ValueMatchType
    path = match.path
    if path.type is PathMatchType.EXACT:
        p = path.value
    elif path.type is PathMatchType.PATH_PREFIX:
        p = path.value.rstrip("/") + "/item/7"
    else:
        p = _sample(path.value)
    headers = {h.name: h.value if h.type is ValueMatchType.EXACT else _sample(h.value) for h in match.headers}
    query = "&".join(f"{q.name}={q.value}" for q in match.query_params)
    return match.method or "GET", p, query, {"host": "web-l7", "user-agent": "bench", **headers}


def unmatched_requests(n_routes: int, count: int, rng: random.Random) -> list[tuple]:
    """Requests no rule takes: paths under no prefix, exact paths missed by a segment,
    the shared prefix without its header, a regular-expression path that does not fit."""
    out = []
    for k in range(count):
        i = rng.randrange(n_routes)
        shape = k % 4
        if shape == 0:
            out.append(("GET", f"/nothing/{k}/here", "", {"host": "web-l7"}))
        elif shape == 1:
            out.append(("GET", f"/api/v1/r{i}/items/extra", "", {"host": "web-l7"}))
        elif shape == 2:
            out.append(("GET", f"/shop/{i % 25}/cart/checkout", "", {"host": "web-l7", "x-user-group": "nobody"}))
        else:
            out.append(("GET", f"/files/r{i - i % 5}/latest.gif", "", {"host": "web-l7"}))
    return out


def linear_select(table, method: str, path: str, query: str, headers) -> object:
    """The baseline: every match of the table in precedence order, the same match
    function, no index (what select_http does without its PositionIndex)."""
    from meshcore.traffic.select import first_http_match
    return first_http_match(table, range(len(table.http)), method, path, query, headers)


def request_classes(table, n_routes: int, per_class: int, rng: random.Random) -> dict[str, list[tuple]]:
    """Requests by where their first matching rule is: early (first tenth of the table),
    late (last tenth), none; and an even mix of the three."""
    from meshcore.traffic.select import select_http
    position = {id(e): p for p, e in enumerate(table.http)}
    total = len(table.http)
    early, late = [], []
    for entry in table.http:
        request = matching_request(entry.match)
        m, p, q, h = request
        # the indexed selection places them (a linear scan of each would take minutes); the
        # requests kept are checked against the linear scan before they are timed
        first = select_http(table, method=m, path=p, query=q, headers=h)
        assert first is not None, (request, entry)
        p = position[id(first)]
        if p < total // 10:
            early.append(request)
        elif p >= total - total // 10:
            late.append(request)
    none = unmatched_requests(n_routes, per_class, rng)
    classes = {"early": rng.sample(early, min(per_class, len(early))),
               "late": rng.sample(late, min(per_class, len(late))), "none": none}
    mix = [r for trio in zip(*classes.values()) for r in trio]
    rng.shuffle(mix)
    classes["mix"] = mix
    return classes


# -- regular-expression-heavy tables -------------------------------------------------------------------------

def regex_rules(i: int) -> list[tuple[str, str]]:
    """Route i's ten RegularExpression paths, each with a path it matches: API versions,
    ids, file types, alternatives, a date, a shared `/api/v` start, and for one route in
    ten a pattern with no literal start (tried for every request)."""
    rules = [
        (f"/api/v[0-9]+/r{i}/users/[0-9]+", f"/api/v2/r{i}/users/42"),
        (f"/r{i}/items/[a-z0-9-]+", f"/r{i}/items/blue-shoe-7"),
        (f"/files/r{i}/[0-9]+\\.(png|jpg)", f"/files/r{i}/17.png"),
        (f"/r{i}/(orders|carts)/[0-9]+", f"/r{i}/carts/9"),
        (f"/r{i}/search/.*", f"/r{i}/search/socks-9"),
        (f"/r{i}/v[12]/[a-z]+", f"/r{i}/v1/status"),
        (f"/static/r{i}/.*\\.css", f"/static/r{i}/site/main.css"),
        (f"/r{i}/users/[0-9]+/avatar", f"/r{i}/users/5/avatar"),
        (f"/r{i}/reports/[0-9]{{4}}-[0-9]{{2}}", f"/r{i}/reports/2024-06"),
        (f"/r{i}/x/[a-z]+/[0-9]+", f"/r{i}/x/abc/1"),
    ]
    if i % 10 == 0:
        rules[-1] = (f"[a-z/]*/legacy{i}/[0-9]+", f"/old/legacy{i}/3")
    return rules


def regex_routes_yaml(n: int) -> str:
    docs = []
    for i in range(n):
        created = f"2024-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        rules = "".join(f"  - {{matches: [{{path: {{type: RegularExpression, value: '{p}'}}}}], "
                        f"backendRefs: [{{name: {SERVICE}, port: 80}}]}}\n" for p, _ in regex_rules(i))
        docs.append("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                    f"metadata: {{name: x{i:04d}, namespace: {NAMESPACE}, creationTimestamp: '{created}'}}\n"
                    f"spec:\n  parentRefs: [{{group: '', kind: Service, name: {SERVICE}, port: 80}}]\n  rules:\n"
                    + rules)
    return "---\n".join(docs)


def regex_virtual_services(n: int) -> tuple:
    """The same patterns as one VirtualService's http routes, in route order."""
    from meshcore.traffic.virtualservice import virtual_service
    http = [{"name": f"x{i}-{k}", "match": [{"uri": {"regex": p}}],
             "route": [{"destination": {"host": SERVICE}}]}
            for i in range(n) for k, (p, _) in enumerate(regex_rules(i))]
    return (virtual_service({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                             "metadata": {"name": "regex-heavy", "namespace": NAMESPACE},
                             "spec": {"hosts": [SERVICE], "http": http}}),)


def without_regex_index(table):
    """The table with its regular-expression paths tried for every request, none of
    them indexed by literal prefix: the unindexed baseline."""
    from dataclasses import replace
    index = table.http_index
    other = tuple(sorted(index.other + tuple(p for ps in index.regex.values() for p in ps)))
    return replace(table, http_index=replace(index, other=other, regex={}, regex_lengths=()))


def regex_heavy(routes: int, repeat: int, seconds: float, per_class: int) -> dict:
    from meshcore.state import MeshStore
    from meshcore.traffic.istio_model import RequestAttributes
    from meshcore.traffic.select import select_http
    from meshcore.traffic.virtualservice_select import select_http_route, select_http_route_linear

    with tempfile.TemporaryDirectory() as directory:
        parsed = parse_text(MESH + "---\n" + regex_routes_yaml(routes), directory)
    store = MeshStore()
    store.replace("files", parsed.resources, atomic=True, version=parsed.version)
    table = store.view.route_table(SERVICE_KEY, 80, NAMESPACE)
    before = without_regex_index(table)
    vss = regex_virtual_services(routes)
    rng = random.Random(11)
    samples = [sample for i in range(routes) for _, sample in regex_rules(i)]
    early = [s for s in samples[:len(samples) // 10]]
    late = [s for s in samples[-(len(samples) // 10):]]
    none = [f"/r{rng.randrange(routes)}/nothing/{k}" for k in range(per_class // 2)] + \
           [f"/api/v3/r{rng.randrange(routes)}/users/x{k}" for k in range(per_class - per_class // 2)]
    classes = {"early": rng.sample(early, min(per_class, len(early))),
               "late": rng.sample(late, min(per_class, len(late))), "none": none}
    mix = [r for trio in zip(*classes.values()) for r in trio]
    rng.shuffle(mix)
    classes["mix"] = mix
    headers = {"host": "web-l7"}
    for paths in classes.values():
        for path in paths:
            want = linear_select(table, "GET", path, "", headers)
            assert select_http(table, method="GET", path=path, query="", headers=headers) is want
            assert select_http(before, method="GET", path=path, query="", headers=headers) is want
            request = RequestAttributes("GET", path, port=80)
            assert select_http_route(vss, request, waypoint_namespace=NAMESPACE) == \
                select_http_route_linear(vss, request, waypoint_namespace=NAMESPACE)
    calls = {
        "select_http": lambda p: select_http(table, method="GET", path=p, query="", headers=headers),
        "select_http_regex_unindexed": lambda p: select_http(before, method="GET", path=p, query="", headers=headers),
        "linear_scan": lambda p: linear_select(table, "GET", p, "", headers),
        "virtualservice_indexed": lambda p: select_http_route(vss, RequestAttributes("GET", p, port=80),
                                                              waypoint_namespace=NAMESPACE),
        "virtualservice_linear": lambda p: select_http_route_linear(vss, RequestAttributes("GET", p, port=80),
                                                                    waypoint_namespace=NAMESPACE),
    }
    rates: dict = {name: {impl: [] for impl in calls} for name in classes}
    for _ in range(repeat):
        for name, paths in classes.items():
            for impl, call in calls.items():
                rates[name][impl].append(per_second(call, paths, seconds))
    out = {"routes": routes, "matches": len(table.http), "regex_paths": len(table.http),
           "regex_without_literal_prefix": len(table.http_index.other),
           "distinct_literal_prefixes": len(table.http_index.regex)}
    out["decisions_per_second"] = {
        name: {impl: statistics.median(v) for impl, v in by_impl.items()} | {"requests": len(classes[name])}
        for name, by_impl in rates.items()}
    for row in out["decisions_per_second"].values():
        row["select_http_vs_regex_unindexed"] = row["select_http"] / row["select_http_regex_unindexed"]
        row["virtualservice_indexed_vs_linear"] = row["virtualservice_indexed"] / row["virtualservice_linear"]
    return out


# -- timing ---------------------------------------------------------------------------------------------

def per_second(call, items: list, seconds: float) -> float:
    """Calls per second of call(item) over `items`, cycled for `seconds` (the clock is
    read every 16 calls: a linear scan of a missed request takes milliseconds)."""
    n, i, size = 0, 0, len(items)
    start = time.perf_counter()
    while True:
        for _ in range(16):
            call(items[i])
            i = i + 1 if i + 1 < size else 0
        n += 16
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def parse_text(text: str, directory: str):
    from meshcore.sources.config import parse
    path = Path(directory) / "routes.yaml"
    path.write_text(text)
    return parse([str(path)])


async def _stall_ticker(stop: asyncio.Event, gaps: list) -> None:
    """Wake every millisecond; each wake-up's lateness past its millisecond goes in `gaps`."""
    # perf_counter: uvloop's own clock counts whole milliseconds
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(max(0.0, now - last - 0.001))
        last = now


def loop_stalls(store, resources: tuple[list, list], text: tuple[str, str], directory: str, rounds: int,
                read_rounds: int) -> dict:
    """replace_async of one changed route in an event loop: its duration and the loop's
    longest stall meanwhile; for the parsed set, for the files read again (as a file
    reload); the service the routes name changed through apply_async (one resource, as
    the xDS client applies a delta: every route naming it is resolved again); and with
    nothing applying for as long as a file reload takes (the ticker's own jitter, and
    the machine's)."""
    from dataclasses import replace as with_fields

    from meshcore.sources.config import parse
    from meshcore.state import Upsert
    service = store.view.by_service_key[SERVICE_KEY]
    # the service every route names, with a port more and back (a change as xDS delivers
    # one: apply_async of a single resource)
    services = (service, with_fields(service, ports=service.ports + ((81, 8081),)))
    paths = []
    for k, t in enumerate(text):
        path = Path(directory) / f"reload-{k}.yaml"
        path.write_text(t)
        paths.append(str(path))

    # the cyclic collections meanwhile, on any thread (each holds the GIL throughout)
    collections: list[float] = []
    started = [0.0]

    def collected(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collections.append(time.perf_counter() - started[0])

    async def run() -> dict:
        out = {}
        stop, gaps = asyncio.Event(), []
        ticker = asyncio.get_running_loop().create_task(_stall_ticker(stop, gaps))
        await asyncio.sleep(0.05)

        async def measured(step) -> tuple[float, float]:
            await asyncio.sleep(0.02)
            del gaps[:], collections[:]
            t = time.perf_counter()
            await step()
            took = time.perf_counter() - t
            await asyncio.sleep(0.002)              # the wake-up after the step is its stall too
            return took, max(gaps, default=0.0)

        idle_s = 0.05
        for name, count in (("replace_async", rounds), ("replace_async_read_files", read_rounds),
                            ("apply_async_service", read_rounds), ("idle", read_rounds)):
            took, stalls, longest_gc = [], [], 0.0
            for r in range(count):
                which = (r + 1) % 2                  # alternate: every round is a change
                if name == "idle":
                    async def step():
                        await asyncio.sleep(idle_s)
                elif name == "replace_async":
                    async def step(which=which):
                        await store.replace_async("files", list(resources[which]), atomic=True)
                elif name == "apply_async_service":
                    async def step(which=which):
                        await store.apply_async("files", [Upsert(services[which])])
                else:
                    async def step(which=which):
                        def read():
                            parsed = parse([paths[which]])
                            return parsed.resources, parsed.version
                        await store.replace_async("files", read=read, atomic=True)
                d, s = await measured(step)
                took.append(d)
                stalls.append(s)
                longest_gc = max(longest_gc, max(collections, default=0.0))
            out[name] = {"apply_ms_median": statistics.median(took) * 1e3, "apply_ms_max": max(took) * 1e3,
                         "stall_ms_median": statistics.median(stalls) * 1e3, "stall_ms_max": max(stalls) * 1e3,
                         "longest_collection_ms": longest_gc * 1e3, "rounds": count}
            if name == "replace_async_read_files":
                # the baseline watches as long as a file reload takes: a longer window sees
                # more of what else the machine runs
                idle_s = statistics.median(took)
        out["idle"] = {k: v for k, v in out["idle"].items() if not k.startswith("apply")} | {"window_ms": idle_s * 1e3}
        stop.set()
        await ticker
        return out
    gc.callbacks.append(collected)
    try:
        try:
            import uvloop
        except ImportError:
            return {"loop": "asyncio", **asyncio.run(run())}
        return {"loop": "uvloop", **uvloop.run(run())}
    finally:
        gc.callbacks.remove(collected)


def matching(routes: int, repeat: int, seconds: float, per_class: int, change_rounds: int) -> dict:
    """Everything measured in this process (part one of the module docstring)."""
    from meshcore.state import MeshStore
    from meshcore.traffic.decide import RequestView, decide
    from meshcore.traffic.select import select_http

    out: dict = {"routes": routes}
    with tempfile.TemporaryDirectory() as directory:
        texts = (MESH + "---\n" + routes_yaml(routes), MESH + "---\n" + routes_yaml(routes, changed=routes // 2))
        loads, resolves = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            parsed = parse_text(texts[0], directory)
            loads.append(time.perf_counter() - t)
            store = MeshStore()
            t = time.perf_counter()
            store.replace("files", parsed.resources, atomic=True, version=parsed.version)
            resolves.append(time.perf_counter() - t)
        view = store.view
        service = view.by_service_key[SERVICE_KEY]
        table = view.route_table(SERVICE_KEY, 80, NAMESPACE)
        rules = sum(len(r.rules) for r in view.routes)
        regex_paths = sum(1 for e in table.http if e.match.path.regex is not None)
        out |= {"rules": rules, "matches": len(table.http), "regex_paths": regex_paths,
                "yaml_bytes": len(texts[0]),
                "build_view_s": {"load_median": statistics.median(loads), "resolve_median": statistics.median(resolves),
                                 "total_median": statistics.median(a + b for a, b in zip(loads, resolves))}}

        # decisions per second, by where the request's rule is in the table
        rng = random.Random(7)
        classes = request_classes(table, routes, per_class, rng)
        for requests in classes.values():
            for m, p, q, h in requests:
                assert select_http(table, method=m, path=p, query=q, headers=h) is linear_select(table, m, p, q, h)
        views = {name: [RequestView(m, p, q, "web-l7", h) for m, p, q, h in requests]
                 for name, requests in classes.items()}
        calls = {
            "decide": lambda rv: decide(view, service, 80, rv, 0.5, waypoint_namespace=NAMESPACE),
            "select_http": lambda rv: select_http(table, method=rv.method, path=rv.path, query=rv.query,
                                                  headers=rv.headers),
            "linear_scan": lambda rv: linear_select(table, rv.method, rv.path, rv.query, rv.headers),
        }
        rates: dict = {name: {impl: [] for impl in calls} for name in views}
        for _ in range(repeat):
            for name, items in views.items():
                for impl, call in calls.items():
                    rates[name][impl].append(per_second(call, items, seconds))
        out["decisions_per_second"] = {
            name: {impl: statistics.median(v) for impl, v in by_impl.items()} | {"requests": len(views[name])}
            for name, by_impl in rates.items()}
        for row in out["decisions_per_second"].values():
            row["select_http_vs_linear"] = row["select_http"] / row["linear_scan"]
            row["decide_vs_linear"] = row["decide"] / row["linear_scan"]

        # one route changed: the whole set replaced with one document different
        other = parse_text(texts[1], directory).resources
        versions = (list(parsed.resources), other)
        took = []
        for r in range(change_rounds):
            t = time.perf_counter()
            applied = store.replace("files", versions[(r + 1) % 2], atomic=True)
            took.append(time.perf_counter() - t)
            assert sum(len(v) for v in applied.changed.values()) == 1, applied.changed
        took.sort()
        out["route_change_replace_ms"] = {"median": statistics.median(took) * 1e3, "max": took[-1] * 1e3,
                                          "rounds": change_rounds}
        # the same, as a file reload does it: the files parsed again, then replaced
        took = []
        for r in range(repeat):
            t = time.perf_counter()
            again = parse_text(texts[(r + 1) % 2], directory)
            store.replace("files", again.resources, atomic=True)
            took.append(time.perf_counter() - t)
        out["route_change_reload_files_ms_median"] = statistics.median(took) * 1e3
        # leave the store at the first version for the loop's rounds (they alternate from it)
        store.replace("files", versions[0], atomic=True)
        out["route_change_in_event_loop"] = loop_stalls(store, versions, texts, directory, change_rounds,
                                                        max(2, repeat * 2))
    return out


# -- through the waypoint -------------------------------------------------------------------------------------

class RoutedMesh(NginxMesh):
    """The benchmark mesh with one more configuration file, read by the waypoint
    alone: the routes, changed between modes (the node proxies keep theirs)."""

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.routes_path = self.dir / "routes.yaml"

    def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.routes_path.write_text(routes_yaml(0))
        super().start(timeout)

    def waypoint_args(self) -> list[str]:
        return [*super().waypoint_args(), "--config", str(self.routes_path)]

    def set_routes(self, text: str, timeout: float = 120.0) -> float:
        """Write the routes file (atomically) and wait for the waypoint to say the
        configuration it makes is applied; seconds it took."""
        if self.routes_path.read_text() == text:
            return 0.0
        digest = hashlib.sha256()
        for path in (self.config_path, self.policy_path):
            digest.update(path.read_text().encode())
        digest.update(text.encode())
        line = f"configuration {digest.hexdigest()[:16]} applied"
        before = self.log("waypoint").count(line)
        tmp = self.routes_path.with_suffix(".tmp")
        tmp.write_text(text)
        start = time.monotonic()
        os.replace(tmp, self.routes_path)
        while self.log("waypoint").count(line) == before:
            if time.monotonic() - start > timeout or self.processes["waypoint"].poll() is not None:
                raise RuntimeError(f"the waypoint did not apply {len(text)} bytes of routes:\n"
                                   + self.log("waypoint")[-3000:])
            time.sleep(0.05)
        return time.monotonic() - start


def through_waypoint(route_counts: tuple[int, ...], repeat: int, seconds: float, connections: int) -> dict:

    texts = {n: routes_yaml(n, catch_all=True) for n in route_counts}
    runs, applied_s = [], {n: [] for n in route_counts}
    with tempfile.TemporaryDirectory() as directory:
        mesh = RoutedMesh(directory, access_log=False)
        forwarder = None
        try:
            mesh.start()
            forwarder = mesh.forwarder(mesh.vip_l7)
            waypoint = mesh.processes["waypoint"].pid
            for r in range(repeat):
                for n in route_counts:
                    applied_s[n].append(mesh.set_routes(texts[n]))
                    warm = wrk(forwarder.url, seconds=1, connections=connections)
                    if warm["failures"]:
                        raise RuntimeError(f"{n} routes: failures while warming up:\n{warm['output']}")
                    print(f"  round {r + 1}: {n} routes", file=sys.stderr, flush=True)
                    cpu0 = cpu_seconds(waypoint)
                    run = wrk(forwarder.url, seconds=seconds, connections=connections)
                    cpu = cpu_seconds(waypoint) - cpu0
                    runs.append({"routes": n, "round": r + 1,
                                 **{k: run[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "failures")},
                                 "waypoint_cpu_us_per_request": cpu / max(1, run["requests"]) * 1e6})
        finally:
            if forwarder is not None:
                forwarder.stop()
            codes = mesh.stop()
    rows = []
    for n in route_counts:
        mine = [r for r in runs if r["routes"] == n]
        row = {"routes": n, "rules": n * RULES_PER_ROUTE, "rounds": len(mine)}
        row |= {k: statistics.median(r[k] for r in mine)
                for k in ("rps", "p50_ms", "p99_ms", "requests", "waypoint_cpu_us_per_request")}
        row["failures"] = sum(r["failures"] for r in mine)
        applied = [s for s in applied_s[n] if s]
        row["waypoint_applied_s_median"] = statistics.median(applied) if applied else None
        rows.append(row)
    zero = rows[0]
    for row in rows:
        row["rps_vs_0_routes"] = row["rps"] / zero["rps"]
        row["cpu_vs_0_routes"] = row["waypoint_cpu_us_per_request"] / zero["waypoint_cpu_us_per_request"]
    return {"connections": connections, "seconds": seconds, "medians": rows, "runs": runs, "exit_codes": codes}


# -- main ---------------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=1000, help="routes attached to the service (10 rules each)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--waypoint", action=argparse.BooleanOptionalAction,
                        default=shutil.which("wrk") is not None and shutil.which("nginx") is not None,
                        help="also requests per second through the waypoint (wrk, nginx)")
    parser.add_argument("--regex-routes", type=int, default=200,
                        help="routes of the regular-expression-heavy table (10 rules each; 0: leave it out)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 routes, one round, short runs")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "route_matching.json"))
    args = parser.parse_args()
    if args.quick:
        args.routes, args.repeat, args.seconds = min(args.routes, 50), 1, 1.0
        args.regex_routes = min(args.regex_routes, 50)
    match_seconds, per_class, change_rounds = (0.05, 30, 4) if args.quick else (0.4, 300, 20)

    result = {"command": " ".join(["python", "benchmarks/route_matching.py", *sys.argv[1:]]),
              "cpus": os.cpu_count(), "pinned": "nothing"}
    print(f"  matching: {args.routes} routes", file=sys.stderr, flush=True)
    result["matching"] = m = matching(args.routes, args.repeat, match_seconds, per_class, change_rounds)
    if args.regex_routes:
        print(f"  regex-heavy: {args.regex_routes} routes", file=sys.stderr, flush=True)
        result["regex_heavy"] = rx = regex_heavy(args.regex_routes, args.repeat, match_seconds, per_class)
    if args.waypoint:
        counts = tuple(dict.fromkeys((0, min(10, args.routes), args.routes)))
        result["waypoint"] = w = through_waypoint(counts, args.repeat, args.seconds, args.connections)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))

    build = m["build_view_s"]
    print(f"{m['routes']} routes, {m['rules']} rules, {m['matches']} matches ({m['regex_paths']} regex paths) on "
          f"one service; medians of {args.repeat} rounds")
    print("| requests | decide()/s | select_http/s | linear scan/s | select vs linear | decide vs linear |")
    print("|---|---|---|---|---|---|")
    for name, row in m["decisions_per_second"].items():
        print(f"| {name} | {row['decide']:,.0f} | {row['select_http']:,.0f} | {row['linear_scan']:,.0f} "
              f"| {row['select_http_vs_linear']:.0f}x | {row['decide_vs_linear']:.0f}x |")
    loop = m["route_change_in_event_loop"]
    change = m["route_change_replace_ms"]
    print(f"build the view from YAML: load {build['load_median']:.3f} s + resolve {build['resolve_median']:.3f} s; "
          f"one route changed: replace {change['median']:.1f} ms (max {change['max']:.1f}), "
          f"files read again + replace {m['route_change_reload_files_ms_median']:.0f} ms")
    print(f"a change in an event loop ({loop['loop']}): longest stall of the loop (median of rounds / max), "
          "longest garbage collection meanwhile")
    for name, label in (("replace_async", "replace_async, parsed set"),
                        ("replace_async_read_files", "replace_async, files read again"),
                        ("apply_async_service", "apply_async, the service they name"),
                        ("idle", "nothing applying (baseline)")):
        row = loop[name]
        took = f"{row['apply_ms_median']:.1f} ms, " if "apply_ms_median" in row else f"{row['window_ms']:.0f} ms window, "
        print(f"  {label}: {took}stall {row['stall_ms_median']:.2f} / {row['stall_ms_max']:.2f} ms, "
              f"collection {row['longest_collection_ms']:.1f} ms")
    if args.regex_routes:
        print(f"regex-heavy: {rx['routes']} routes, {rx['matches']} RegularExpression paths "
              f"({rx['distinct_literal_prefixes']} literal prefixes, {rx['regex_without_literal_prefix']} without one)")
        print("| requests | select_http/s | regex paths unindexed/s | linear scan/s | indexed vs unindexed "
              "| VirtualService indexed/s | VirtualService linear/s | indexed vs linear |")
        print("|---|---|---|---|---|---|---|---|")
        for name, row in rx["decisions_per_second"].items():
            print(f"| {name} | {row['select_http']:,.0f} | {row['select_http_regex_unindexed']:,.0f} "
                  f"| {row['linear_scan']:,.0f} | {row['select_http_vs_regex_unindexed']:.1f}x "
                  f"| {row['virtualservice_indexed']:,.0f} | {row['virtualservice_linear']:,.0f} "
                  f"| {row['virtualservice_indexed_vs_linear']:.1f}x |")
    failures = 0
    if args.waypoint:
        print(f"through the waypoint: wrk -t1 -c{w['connections']}, keep-alive, {args.seconds:g} s, "
              f"medians of {args.repeat} rounds")
        print("| routes | requests/s | vs 0 routes | p50 ms | p99 ms | waypoint CPU µs/request | vs 0 routes |")
        print("|---|---|---|---|---|---|---|")
        for row in w["medians"]:
            print(f"| {row['routes']} | {row['rps']:.0f} | {row['rps_vs_0_routes']:.2f} | {row['p50_ms']:.2f} "
                  f"| {row['p99_ms']:.2f} | {row['waypoint_cpu_us_per_request']:.0f} | {row['cpu_vs_0_routes']:.2f} |")
        failures = sum(r["failures"] for r in w["medians"])
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
