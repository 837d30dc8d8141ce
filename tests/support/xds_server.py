"""A test istiod's delta ADS: `envoy.service.discovery.v3.AggregatedDiscoveryService/
DeltaAggregatedResources` on grpcio's generic handlers, written from the protos (it
builds `istio.workload.Address` and `istio.security.Authorization` messages itself and
shares nothing with meshcore's client).

What it does, as istiod does for a ztunnel:
- a wildcard initial request gets every resource of its type, except Address resources
  whose version equals the one the client claimed in `initial_resource_versions`;
  claimed names that no longer exist come back in `removed_resources`; a response is
  sent even when it holds nothing (the client's readiness waits for it);
- on demand (Address initial request subscribing and unsubscribing "*"): only what is
  subscribed (with `answer_on_demand_initial` False, the initial request goes unanswered,
  as istiod may leave a subscription to nothing), and a `network/IP` subscription is answered with the workload named by
  its uid, the IP in `aliases`, or with the key in `removed_resources`;
- `push()` sends adds, updates and removals to every stream (an on-demand stream gets
  the Address resources it subscribed to).

Every request is recorded (`requests`): ACK or NACK with its message, nonces,
initial_resource_versions, subscriptions. The server runs on grpcio's threaded server,
so a client on the test's event loop is measured on its own.
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from istiod_tls import ISTIOD_PING_POLICY
from google.protobuf import any_pb2

from meshcore.xds.proto import authorization_pb2 as apb
from meshcore.xds.proto import discovery_pb2 as dpb
from meshcore.xds.proto import workload_pb2 as wpb

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
_END = object()


# --- resources --------------------------------------------------------------------------

def workload(uid: str, ip: str, *, name: str | None = None, namespace: str = "default", network: str = "",
             service_account: str = "default", node: str = "node-a", hbone: bool = True,
             services: dict | None = None) -> wpb.Address:
    w = wpb.Workload(uid=uid, name=name or uid.rpartition("/")[2], namespace=namespace,
                     addresses=[ipaddress.ip_address(ip).packed], network=network,
                     service_account=service_account, node=node,
                     tunnel_protocol=wpb.HBONE if hbone else wpb.NONE)
    for key, ports in (services or {}).items():
        w.services[key].ports.extend(wpb.Port(service_port=sp, target_port=tp) for sp, tp in ports)
    return wpb.Address(workload=w)


def service(name: str, namespace: str, vip: str, ports=((80, 8080),), network: str = "") -> wpb.Address:
    hostname = f"{name}.{namespace}.svc.cluster.local"
    return wpb.Address(service=wpb.Service(
        name=name, namespace=namespace, hostname=hostname,
        addresses=[wpb.NetworkAddress(network=network, address=ipaddress.ip_address(vip).packed)],
        ports=[wpb.Port(service_port=sp, target_port=tp) for sp, tp in ports]))


def policy(name: str, namespace: str = "default", *, principal: str = "cluster.local/ns/default/sa/client",
           deny: bool = False) -> apb.Authorization:
    match = apb.Match(principals=[apb.StringMatch(exact=principal)])
    return apb.Authorization(name=name, namespace=namespace, scope=apb.WORKLOAD_SELECTOR,
                             action=apb.DENY if deny else apb.ALLOW,
                             rules=[apb.Rule(clauses=[apb.Clause(matches=[match])])])


def resource_name(message) -> str:
    """istiod's resource names: a workload's uid, namespace/hostname, namespace/name."""
    if isinstance(message, apb.Authorization):
        return f"{message.namespace}/{message.name}"
    if message.WhichOneof("type") == "workload":
        return message.workload.uid
    return f"{message.service.namespace}/{message.service.hostname}"


def type_of(message) -> str:
    return AUTHORIZATION if isinstance(message, apb.Authorization) else ADDRESS


def _addresses_of(message) -> list[str]:
    """The network/IP keys an on-demand client may ask for this Address by."""
    if isinstance(message, apb.Authorization):
        return []
    if message.WhichOneof("type") == "workload":
        w = message.workload
        return [f"{w.network}/{ipaddress.ip_address(a)}" for a in w.addresses]
    return [f"{a.network}/{ipaddress.ip_address(a.address)}" for a in message.service.addresses]


@dataclass
class Entry:
    """One resource istiod has: serialized once (a push of thousands is built ahead)."""
    name: str
    version: str
    payload: bytes
    keys: list
    type_url: str

    def resource(self, alias: str | None = None) -> dpb.Resource:
        r = dpb.Resource(name=self.name, version=self.version,
                         resource=any_pb2.Any(type_url=self.type_url, value=self.payload))
        if alias:
            r.aliases.append(alias)
        return r


@dataclass
class Request:
    stream: int
    type_url: str
    nonce: str                          # response_nonce: "" for an initial or subscription request
    nack: str | None                    # error_detail.message of a NACK
    code: int
    versions: dict                      # initial_resource_versions
    subscribe: list
    unsubscribe: list
    node_id: str
    metadata: dict = field(default_factory=dict)

    @property
    def ack(self) -> bool:
        return bool(self.nonce) and self.nack is None


class _Stream:
    def __init__(self, number: int, metadata: dict):
        self.number = number
        self.metadata = metadata
        self.out: queue.Queue = queue.Queue()
        self.wildcard: dict[str, bool] = {}         # type -> wildcard (else on demand)
        self.subscribed: set[str] = set()           # on-demand Address names and keys
        self.sent: dict[str, list] = {}             # nonce -> names, for tests


class AdsServer:
    """The servicer. `handler()` for a grpc server; `push()`/`remove()` change what
    istiod has and tell every stream."""

    def __init__(self):
        self.lock = threading.RLock()
        self.resources: dict[str, dict[str, Entry]] = {ADDRESS: {}, AUTHORIZATION: {}}
        self.requests: list[Request] = []
        self.streams: list[_Stream] = []
        self._nonce = itertools.count(1)
        self._stream_ids = itertools.count()
        self._version = itertools.count(1)
        self.answer_subscriptions = True                        # False: on-demand requests go unanswered
        self.answer_on_demand_initial = True                    # False: so does an on-demand initial request

    # -- what istiod has ---------------------------------------------------------------------
    def entry(self, message, *, name: str | None = None, type_url: str | None = None) -> Entry:
        return Entry(name or resource_name(message), f"v{next(self._version)}", message.SerializeToString(),
                     _addresses_of(message), type_url or type_of(message))

    def set(self, *messages, entries=()) -> list[Entry]:
        """Put resources in istiod without telling anyone (before a client connects)."""
        entries = list(entries) + [self.entry(m) for m in messages]
        with self.lock:
            for e in entries:
                self.resources[e.type_url][e.name] = e
        return entries

    def push(self, *messages, entries=(), removed=(), type_url: str | None = None) -> list[str]:
        """Add or update `messages` (and prepared `entries`), remove the names in
        `removed` (of `type_url`, or of the messages' type), and push to every stream.
        Returns the nonces sent."""
        entries = list(entries) + [self.entry(m) for m in messages]
        kinds = {e.type_url for e in entries} | ({type_url or ADDRESS} if removed else set())
        nonces = []
        with self.lock:
            for e in entries:
                self.resources[e.type_url][e.name] = e
            for name in removed:
                self.resources[type_url or ADDRESS].pop(name, None)
            for s in self.streams:
                for t in kinds:
                    if t not in s.wildcard:
                        continue
                    mine = [e for e in entries if e.type_url == t]
                    gone = list(removed) if t == (type_url or ADDRESS) else []
                    if not s.wildcard[t]:
                        mine = [e for e in mine if e.name in s.subscribed]
                        gone = [n for n in gone if n in s.subscribed]
                    if mine or gone:
                        nonces.append(self._send(s, t, [e.resource() for e in mine], gone))
        return nonces

    def push_raw(self, type_url: str, resources: list, removed=(), *, unasked: bool = False) -> list[str]:
        """Send resources exactly as given (a malformed one, say) to every stream that
        asked for `type_url` (with `unasked`, to every stream: a type nobody asked for)."""
        with self.lock:
            return [self._send(s, type_url, resources, list(removed)) for s in self.streams
                    if unasked or type_url in s.wildcard]

    # -- the RPC ---------------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self._serve, request_deserializer=dpb.DeltaDiscoveryRequest.FromString,
            response_serializer=dpb.DeltaDiscoveryResponse.SerializeToString)
        return grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService", {"DeltaAggregatedResources": method})

    def _serve(self, requests, context):
        with self.lock:
            stream = _Stream(next(self._stream_ids), dict(context.invocation_metadata()))
            self.streams.append(stream)
        reader = threading.Thread(target=self._read, args=(stream, requests), daemon=True)
        reader.start()
        try:
            while context.is_active():
                try:
                    message = stream.out.get(timeout=0.05)
                except queue.Empty:
                    continue
                if message is _END:
                    return
                yield message
        finally:
            with self.lock:
                if stream in self.streams:
                    self.streams.remove(stream)

    def _read(self, stream: _Stream, requests) -> None:
        try:
            for req in requests:
                self._on_request(stream, req)
        except grpc.RpcError:
            pass
        finally:
            stream.out.put(_END)

    def _on_request(self, stream: _Stream, req) -> None:
        with self.lock:
            self.requests.append(Request(
                stream.number, req.type_url, req.response_nonce,
                req.error_detail.message if req.HasField("error_detail") else None, req.error_detail.code,
                dict(req.initial_resource_versions), list(req.resource_names_subscribe),
                list(req.resource_names_unsubscribe), req.node.id if req.HasField("node") else "",
                stream.metadata))
            t = req.type_url
            if req.response_nonce:
                return
            if t not in stream.wildcard:                          # the initial request
                on_demand = "*" in req.resource_names_unsubscribe
                stream.wildcard[t] = not on_demand
                have = self.resources.get(t, {})
                claimed = dict(req.initial_resource_versions)
                if on_demand:
                    stream.subscribed.update(n for n in req.resource_names_subscribe if n != "*")
                    stream.subscribed.update(claimed)
                    if self.answer_on_demand_initial:
                        self._answer_subscriptions(stream, list(stream.subscribed), claimed)
                    return
                send = [e.resource() for e in have.values()
                        if not (t == ADDRESS and claimed.get(e.name) == e.version)]
                gone = [n for n in claimed if n not in have]
                self._send(stream, t, send, gone)
                return
            if req.resource_names_subscribe and self.answer_subscriptions:
                stream.subscribed.update(req.resource_names_subscribe)
                self._answer_subscriptions(stream, list(req.resource_names_subscribe), {})

    def _answer_subscriptions(self, stream: _Stream, names: list, claimed: dict) -> None:
        have = self.resources[ADDRESS]
        send, gone = [], []
        for key in names:
            e = have.get(key)
            if e is not None:
                if claimed.get(key) != e.version:
                    send.append(e.resource())
                continue
            e = next((e for e in have.values() if key in e.keys), None)
            if e is None:
                gone.append(key)
            else:
                stream.subscribed.add(e.name)
                send.append(e.resource(alias=key))
        self._send(stream, ADDRESS, send, gone)

    def _send(self, stream: _Stream, type_url: str, resources: list, removed: list) -> str:
        nonce = f"n{next(self._nonce)}"
        stream.sent[nonce] = [r.name for r in resources]
        stream.out.put(dpb.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, resources=resources,
                                                  removed_resources=removed,
                                                  system_version_info=f"{type_url.rpartition('.')[2]}-{nonce}"))
        return nonce

    # -- for tests ---------------------------------------------------------------------------
    def acks(self, type_url: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.ack and (type_url is None or r.type_url == type_url)]

    def nacks(self, type_url: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.nack is not None and (type_url is None or r.type_url == type_url)]

    def initial(self, stream: int, type_url: str) -> Request | None:
        return next((r for r in self.requests if r.stream == stream and r.type_url == type_url
                     and not r.nonce and r.node_id), None)

    def answered(self, nonce: str) -> Request | None:
        """The ACK or NACK of the response `nonce`."""
        return next((r for r in self.requests if r.nonce == nonce), None)

    def end_streams(self) -> None:
        with self.lock:
            for s in self.streams:
                s.out.put(_END)


class Istiod:
    """An AdsServer on a threaded TLS gRPC server on 127.0.0.1, stoppable and restartable
    on the same port (the address a client keeps dialing)."""

    def __init__(self, tls, ads: AdsServer | None = None, port: int = 0):
        self.tls, self.ads, self.port = tls, ads or AdsServer(), port
        self.server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Istiod":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                             options=(("grpc.max_receive_message_length", 200 << 20),
                                      ("grpc.max_send_message_length", 200 << 20),
                                      ("grpc.so_reuseport", 0), *ISTIOD_PING_POLICY))
        server.add_generic_rpc_handlers((self.ads.handler(),))
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", self.tls.server_credentials())
        if not self.port:
            raise OSError("the test istiod could not bind")
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            self.ads.end_streams()
            server.stop(grace=None).wait(5)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "") -> None:
    """Until predicate() is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(interval)
