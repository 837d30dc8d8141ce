"""Http2Handler's pieces in process: a HEAD answered by the waypoint itself, the upstream
pool's stream limit with requests waiting on one connection being opened, a local
reply to a client already gone, and the labels a record gives its metrics."""
import asyncio
import types

import h2.config
import h2.connection
import h2.events
import pytest

import meshcore.waypoint.http2 as H2
from meshcore.waypoint.upstreams import Http2Upstreams
from meshcore.aio.connection import HboneConnection
from meshcore.aio.request import request_dispatcher
from meshcore.errors import StreamClosedError
from meshcore.node.record import ConnectionRecord
from meshcore.node.routing import HBONE
from meshcore.policy.waypoint import denied_response
from meshcore.waypoint.telemetry import RequestRecord

pytestmark = pytest.mark.timeout(30)


def test_a_head_the_waypoint_answers_itself_gets_headers_only():
    async def scenario():
        errors = []

        async def handler(exchange):
            denied = denied_response([])
            try:
                await H2._respond(exchange, denied.status, list(denied.headers), denied.body)
            except Exception as exc:
                errors.append(exc)
                raise
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HboneConnection(client=False, on_request=request_dispatcher(handler)),
                                          "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "HEAD"), (":path", "/admin"), (":scheme", "http"), (":authority", "web")],
                            end_stream=True)
        writer.write(client.data_to_send())
        seen = []
        while not any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in seen):
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data
            seen += client.receive_data(data)
            writer.write(client.data_to_send())
        writer.close()
        server.close()
        return seen, errors
    seen, errors = asyncio.run(scenario())
    response = next(e for e in seen if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"403"
    assert not any(isinstance(e, (h2.events.DataReceived, h2.events.StreamReset)) for e in seen), seen
    assert response.stream_ended is not None and not errors


class _Conn:
    def __init__(self, limit):
        self.usable = True
        self.h2 = types.SimpleNamespace(open_local_streams=0, remote_max_concurrent_streams=limit)
        self.streams = {}
        self.on_closed = self.on_stream_closed = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()


def test_requests_waiting_on_a_connection_being_opened_keep_to_its_stream_limit():
    async def scenario():
        opened = []

        async def open_upstream(chosen, me, protocol_factory=None, connect_timeout=None):
            await asyncio.sleep(0.05)
            opened.append(_Conn(limit=1))
            return None, opened[-1]
        pool = Http2Upstreams(types.SimpleNamespace(open_upstream=open_upstream))
        chosen = types.SimpleNamespace(dial=("127.0.0.1", 1), authority="web", expected=())
        me = types.SimpleNamespace(identity="waypoint")

        async def use():
            conn = await pool.get(chosen, me)
            conn.h2.open_local_streams += 1               # what send_request does on it at once
            return conn
        conns = await asyncio.gather(use(), use(), use())
        return conns, opened
    conns, opened = asyncio.run(scenario())
    assert len({id(c) for c in conns}) == 3 and len(opened) == 3
    assert all(c.h2.open_local_streams == 1 for c in opened)


class _Exchange:
    """A client stream that is already gone when the waypoint answers it."""
    headers = [(b"x-tenant", b"silver"), (b"x-tenant", b"gold")]
    authority, method, path, scheme, body_ended = "web", "GET", "/x/../admin", "http", True
    on_reset = stream_error = None

    def respond(self, *a, **k):
        raise StreamClosedError("the stream is closed")


def test_a_denied_request_whose_client_left_is_reported_dc_and_the_policy_saw_it_whole(monkeypatch):
    checked = []

    class Deny:
        reason = "no"

        def __bool__(self):
            return False

    def evaluate(*a, **k):
        checked.append(k)
        return Deny()
    monkeypatch.setattr(H2, "evaluate_request", evaluate)
    records = []
    ctx = types.SimpleNamespace(store=types.SimpleNamespace(view=types.SimpleNamespace(
        waypoint_policy_set=lambda *a: None)))
    handler = H2.Http2Handler(ctx, types.SimpleNamespace(), types.SimpleNamespace(report=records.append),
                              ("shop", "waypoint"))
    tunnel = types.SimpleNamespace(
        request=types.SimpleNamespace(authority="10.96.0.10:80", peer_identity=None, peer_address=("10.0.0.1", 1),
                                      host="10.96.0.10", port=80),
        record=ConnectionRecord("inbound"), service=None, waypoint=None, app_protocol=None)
    asyncio.run(handler._one(_Exchange(), tunnel))
    assert [(r.status, r.flag) for r in records] == [(403, "DC")]
    assert checked[0]["headers"]["x-tenant"] == "silver,gold"
    assert checked[0]["path"] == "/admin"


def test_grpc_status_label_is_one_of_grpcs_codes():
    record = RequestRecord(ConnectionRecord("inbound"))
    for value, label in (("0", "0"), ("16", "16"), ("17", ""), ("-1", ""), ("abc", ""), ("", "")):
        record.grpc_status = value
        assert record.labels()["grpc_response_status"] == label


def test_h2_upstream_forwards_the_normalized_path(monkeypatch):
    sent = []

    def send_request(conn, method, path, **k):
        sent.append(path)
        raise StreamClosedError("stop here")
    monkeypatch.setattr(H2, "send_request", send_request)

    class Allow:
        reason = "ok"

        def __bool__(self):
            return True
    monkeypatch.setattr(H2, "evaluate_request", lambda *a, **k: Allow())
    records = []
    ctx = types.SimpleNamespace(store=types.SimpleNamespace(view=types.SimpleNamespace(
        waypoint_policy_set=lambda *a: None)))

    class Tunnels:
        def upstream(self, *a):
            return types.SimpleNamespace(kind=HBONE, workload=None, expected=(types.SimpleNamespace(uri="spiffe://x"),),
                                         dial=("127.0.0.1", 1), authority="web", reason="")
    handler = H2.Http2Handler(ctx, Tunnels(), types.SimpleNamespace(report=records.append), ("shop", "waypoint"))

    async def get(chosen, me, limits=None):
        return object()
    handler.upstreams.get = get
    tunnel = types.SimpleNamespace(
        request=types.SimpleNamespace(authority="10.96.0.10:80", peer_identity=None, peer_address=("10.0.0.1", 1),
                                      host="10.96.0.10", port=80),
        record=ConnectionRecord("inbound"), service=None, waypoint=None, app_protocol=None)
    exchange = _Exchange()
    exchange.path = "/public/%2e%2e/admin?q=1"
    asyncio.run(handler._one(exchange, tunnel))
    assert sent and set(sent) == {"/admin?q=1"}     # each attempt: a stream that cannot open goes again


class _Up:
    body_ended = False
    trailers = None
    on_informational = None

    def __init__(self, hang=False):
        self.hang, self.chunks, self.resets = hang, [b"part", b""], []

    async def response(self):
        if self.hang:
            await asyncio.Event().wait()
        return types.SimpleNamespace(status=200, headers=[(b"content-type", b"text/plain")])

    async def read(self):
        return self.chunks.pop(0)

    def reset(self, code=None):
        self.resets.append(code)

    def close(self):
        pass


def _relay_rig(monkeypatch, up):
    monkeypatch.setattr(H2, "send_request", lambda *a, **k: up)

    class Allow:
        reason = "ok"

        def __bool__(self):
            return True
    monkeypatch.setattr(H2, "evaluate_request", lambda *a, **k: Allow())
    records = []
    ctx = types.SimpleNamespace(store=types.SimpleNamespace(view=types.SimpleNamespace(
        waypoint_policy_set=lambda *a: None)))

    class Tunnels:
        def upstream(self, *a):
            return types.SimpleNamespace(kind=HBONE, workload=None, expected=(types.SimpleNamespace(uri="spiffe://x"),),
                                         dial=("127.0.0.1", 1), authority="web", reason="")
    handler = H2.Http2Handler(ctx, Tunnels(), types.SimpleNamespace(report=records.append), ("shop", "waypoint"))

    async def get(chosen, me, limits=None):
        return object()
    handler.upstreams.get = get
    tunnel = types.SimpleNamespace(
        request=types.SimpleNamespace(authority="10.96.0.10:80", peer_identity=None, peer_address=("10.0.0.1", 1),
                                      host="10.96.0.10", port=80),
        record=ConnectionRecord("inbound"), service=None, waypoint=None, app_protocol=None)
    return handler, tunnel, records


def test_a_response_the_client_cannot_take_is_dc_not_an_upstream_failure(monkeypatch):
    up = _Up()
    handler, tunnel, records = _relay_rig(monkeypatch, up)

    class Gone(_Exchange):
        path = "/a"

        def respond(self, *a, **k):
            pass

        async def write(self, chunk):
            raise ConnectionResetError("the client's connection broke")
    asyncio.run(handler._one(Gone(), tunnel))
    assert [(r.status, r.flag) for r in records] == [(200, "DC")]
    assert up.resets                               # the backend is told at once


def test_a_client_reset_stays_dr_when_its_task_is_cancelled(monkeypatch):
    up = _Up(hang=True)
    handler, tunnel, records = _relay_rig(monkeypatch, up)

    async def scenario():
        exchange = _Exchange()
        exchange.path = "/a"
        task = asyncio.get_running_loop().create_task(handler._one(exchange, tunnel))
        await asyncio.sleep(0.05)
        exchange.on_reset(ConnectionResetError("RST_STREAM CANCEL"))
        task.cancel()                              # what the connection does to an unanswered request
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(scenario())
    assert [(r.status, r.flag) for r in records] == [(0, "DR")]


def test_a_request_the_backend_refused_unprocessed_is_sent_once_more(monkeypatch):
    from meshcore.errors import ErrorCode, StreamResetError
    first, second = _Up(), _Up()

    async def refused():
        raise StreamResetError("refused", ErrorCode.REFUSED_STREAM, 1, True)
    first.response = refused
    ups = [first, second]
    handler, tunnel, records = _relay_rig(monkeypatch, None)
    monkeypatch.setattr(H2, "send_request", lambda *a, **k: ups.pop(0))

    class Ok(_Exchange):
        path = "/a"
        written = b""

        def respond(self, *a, **k):
            pass

        async def write(self, chunk):
            Ok.written += chunk

        async def end(self, trailers=None):
            pass
    asyncio.run(handler._one(Ok(), tunnel))
    assert [(r.status, r.flag) for r in records] == [(200, "-")] and Ok.written == b"part" and not ups
