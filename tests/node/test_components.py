"""The inbound component on its own, as a waypoint would reuse it: a ProxyContext (store,
certificates, telemetry) and an Inbound, no NodeProxy; a change in the store opens a
listener for a new local workload and ends a tunnel that a new policy denies."""
import asyncio
import dataclasses
import ipaddress
import random
import textwrap

import pytest

from meshcore import Mesh
from meshcore.errors import TunnelError
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
from meshcore.node.context import ProxyContext, ProxySettings
from meshcore.node.inbound import Inbound
from meshcore.node.metrics import NodeMetrics
from meshcore.node.netaddr import SourceBinder
from meshcore.node.telemetry import Telemetry
from meshcore.policy.istio import load_authorization_policies
from meshcore.state import MeshStore, Upsert, Workload
from meshcore.localworkload import echo

CLIENT_ID = SpiffeId("cluster.local", "shop", "client")


def workload(uid: str, ip: str, sa: str, node: str = "n1") -> Workload:
    return Workload(uid=uid, name=uid, namespace="shop", ips=(ipaddress.ip_address(ip),), service_account=sa,
                    node=node, labels=(("app", uid),))


def allow(principal: str):
    return load_authorization_policies(textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: web, namespace: shop}}
        spec:
          selector: {{matchLabels: {{app: web}}}}
          rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]
        """), "test.yaml")[0]


def test_inbound_follows_the_store_without_a_node_proxy(run):
    net = f"127.{random.randint(100, 250)}"
    web_ip, api_ip, client_ip = f"{net}.2.1", f"{net}.2.2", f"{net}.1.1"
    ca = CertificateAuthority.create("cluster.local")
    store = MeshStore()
    store.apply("test", [Upsert(workload("client", client_ip, "client", node="n0")),
                         Upsert(workload("web", web_ip, "web")), Upsert(allow("cluster.local/ns/shop/sa/client"))])
    metrics = NodeMetrics("test")
    ctx = ProxyContext(ProxySettings(node_name="n1"), store, CertificateStore(ca), Telemetry(metrics),
                       SourceBinder(False))

    async def scenario():
        upstream = await asyncio.start_server(echo, web_ip, 0)
        port = upstream.sockets[0].getsockname()[1]
        api_upstream = await asyncio.start_server(echo, api_ip, port)
        inbound = await Inbound(ctx, hbone=("workloads", 15008), plaintext=None).start()
        try:
            assert set(inbound.servers) == {(web_ip, 15008)}
            async with Mesh(CLIENT_ID, CertificateStore(ca)) as mesh:
                reader, writer = await mesh.open_tunnel(web_ip, port, SpiffeId("cluster.local", "shop", "web"))
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                # a new local workload: its listener opens with the change
                await store.apply_async("test", [Upsert(workload("api", api_ip, "api"))])
                assert set(inbound.servers) == {(web_ip, 15008), (api_ip, 15008)}
                r2, w2 = await mesh.open_tunnel(api_ip, port, SpiffeId("cluster.local", "shop", "api"))
                w2.write(b"pong")
                assert await r2.readexactly(4) == b"pong"
                # a policy that no longer names the client ends its open tunnel to web
                await store.apply_async("test", [Upsert(allow("cluster.local/ns/shop/sa/someone-else"))])
                assert await asyncio.wait_for(reader.read(), 5) == b""
                with pytest.raises(TunnelError) as refused:
                    await mesh.open_tunnel(web_ip, port, SpiffeId("cluster.local", "shop", "web"))
                assert refused.value.status == 401
                w2.write(b"still")                      # the tunnel to api is another workload's: untouched
                assert await r2.readexactly(5) == b"still"
                w2.close()
                writer.close()
        finally:
            await inbound.close()
            upstream.close()
            api_upstream.close()
        closed = metrics.closed.collect()[0].samples
        return sum(s.value for s in closed if s.name.endswith("_total"))
    assert run(scenario()) >= 1


def test_an_address_that_cannot_be_bound_is_tried_again_and_a_closed_inbound_follows_nothing(run, monkeypatch):
    import socket
    from meshcore.node import inbound as inbound_module
    monkeypatch.setattr(inbound_module, "BIND_RETRY", 0.05)
    net = f"127.{random.randint(100, 250)}"
    web_ip = f"{net}.2.1"
    store = MeshStore()
    store.apply("test", [Upsert(workload("web", web_ip, "web"))])
    ctx = ProxyContext(ProxySettings(node_name="n1"), store, CertificateStore(CertificateAuthority.create("cluster.local")),
                       Telemetry(NodeMetrics("test")), SourceBinder(False))

    async def scenario():
        squatter = socket.create_server((web_ip, 15008))         # someone else holds the address
        inbound = await Inbound(ctx, hbone=("workloads", 15008), plaintext=None).start()
        try:
            assert inbound.unbound == {(web_ip, 15008)} and not inbound.servers
            squatter.close()
            for _ in range(100):
                if inbound.servers:
                    break
                await asyncio.sleep(0.02)
            assert set(inbound.servers) == {(web_ip, 15008)} and not inbound.unbound
        finally:
            await inbound.close()
        await store.apply_async("test", [Upsert(workload("api", f"{net}.2.2", "api"))])
        return inbound.servers
    assert run(scenario()) == {}


def test_a_connection_around_the_waypoint_is_let_in_and_logged_unless_a_policy_names_the_waypoint(run):
    """ztunnel's inbound: traffic to a workload behind a waypoint that does not come from
    it is allowed (the destination's policies decide); meshcore's access log names the
    waypoint it went around. The peer's address, not only its identity, must be the
    waypoint's."""
    from meshcore.state.model import GatewayAddress
    net = f"127.{random.randint(100, 250)}"
    web_ip, wp_ip = f"{net}.2.1", f"{net}.4.1"
    ca = CertificateAuthority.create("cluster.local")
    waypoint_id = SpiffeId("cluster.local", "shop", "waypoint")
    web = Workload(uid="web", name="web", namespace="shop", ips=(ipaddress.ip_address(web_ip),),
                   service_account="web", node="n1", labels=(("app", "web"),),
                   waypoint=GatewayAddress(address=("", ipaddress.ip_address(wp_ip))))
    store = MeshStore()
    store.apply("test", [Upsert(web), Upsert(workload("waypoint", wp_ip, "waypoint", node="n0"))])
    records = []

    class Recording(Telemetry):
        def refused(self, record, why, flag="CONNECT"):
            records.append(record)
            super().refused(record, why, flag)

        def closed(self, record):
            records.append(record)
            super().closed(record)

    ctx = ProxyContext(ProxySettings(node_name="n1"), store, CertificateStore(ca), Recording(NodeMetrics("test")),
                       SourceBinder(False))
    web_id = SpiffeId("cluster.local", "shop", "web")

    async def exchange(identity, port):
        async with Mesh(identity, CertificateStore(ca)) as mesh:
            reader, writer = await mesh.open_tunnel(web_ip, port, web_id)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
        for _ in range(100):                    # the access-log record comes when the tunnel ends
            if records:
                return records.pop()
            await asyncio.sleep(0.02)
        raise AssertionError("no access-log record")

    async def scenario():
        upstream = await asyncio.start_server(echo, web_ip, 0)
        port = upstream.sockets[0].getsockname()[1]
        inbound = await Inbound(ctx, hbone=("workloads", 15008), plaintext=None).start()
        try:
            # the client went around the waypoint: let in, and the log says so
            record = await exchange(CLIENT_ID, port)
            assert record.flag != "DENY" and record.bypassed == waypoint_id.uri
            assert record.log_fields()["waypoint.bypassed"] == waypoint_id.uri
            # the waypoint's identity from another address is not the waypoint
            record = await exchange(waypoint_id, port)
            assert record.bypassed == waypoint_id.uri
            # from the waypoint's identity and address: nothing bypassed
            peer_ip = record.src_addr.rpartition(":")[0]
            moved = GatewayAddress(address=("", ipaddress.ip_address(peer_ip)))
            await store.apply_async("test", [Upsert(workload("waypoint", peer_ip, "waypoint", node="n0")),
                                             Upsert(dataclasses.replace(web, waypoint=moved))])
            record = await exchange(waypoint_id, port)
            assert record.bypassed == "" and "waypoint.bypassed" not in record.log_fields()
            # what Istio documents to refuse the way around: allow only the waypoint
            await store.apply_async("test", [Upsert(allow(waypoint_id.principal))])
            async with Mesh(CLIENT_ID, CertificateStore(ca)) as mesh:
                with pytest.raises(TunnelError) as refused:
                    await mesh.open_tunnel(web_ip, port, web_id)
            assert refused.value.status == 401
            assert records[-1].flag == "DENY" and records[-1].bypassed == waypoint_id.uri
            records.clear()
            assert (await exchange(waypoint_id, port)).flag != "DENY"
        finally:
            await inbound.close()
            upstream.close()
    run(scenario())
