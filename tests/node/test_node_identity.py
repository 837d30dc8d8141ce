"""Where a node proxy's certificates come from (--cert-dir: cert-manager / SPIRE files,
one directory per workload), and readiness naming what is pending."""
import asyncio
import random

import pytest

from meshcore.errors import IdentityError, ListenerError
from meshcore.identity import CertificateAuthority, SpiffeId
from meshcore.identity.x509util import certs_pem
from meshcore.localmesh import LocalMesh
from meshcore.node.proxy import NodeOptions, NodeProxy

MESH = """
workloads:
- {{uid: a, name: client, namespace: shop, serviceAccount: client, workloadIps: ["{prefix}.1.1"], protocol: HBONE, node: n1}}
- {{uid: b, name: web, namespace: shop, serviceAccount: web, workloadIps: ["{prefix}.1.2"], protocol: HBONE, node: n1}}
"""


def _write_cert_manager(ca, identity, directory):
    creds = ca.issue(identity)
    directory.mkdir(parents=True)
    (directory / "tls.crt").write_bytes(creds.chain_pem())
    (directory / "tls.key").write_bytes(creds.key_pem())
    (directory / "ca.crt").write_bytes(certs_pem(ca.roots))
    return creds


@pytest.fixture
def setup(tmp_path):
    prefix = f"127.{random.randint(100, 250)}"
    (tmp_path / "mesh.yaml").write_text(MESH.format(prefix=prefix))
    ca = CertificateAuthority.create("cluster.local")
    options = NodeOptions(node_name="n1", config_paths=(str(tmp_path / "mesh.yaml"),), address=f"{prefix}.0.1",
                          cert_dir=str(tmp_path / "certs"), listen={"socks5": (f"{prefix}.0.1", 15080),
                                                                   "admin": (f"{prefix}.0.1", 15000)})
    return ca, options, tmp_path / "certs", f"{prefix}.0.1"


def test_cert_dir_files_are_used_and_missing_ones_keep_the_node_unready(setup):
    ca, options, certs, address = setup
    client = _write_cert_manager(ca, SpiffeId("cluster.local", "shop", "client"), certs / "client")

    async def scenario():
        proxy = await NodeProxy(options).start()
        try:
            status, body = await asyncio.to_thread(LocalMesh.http_get, address, 15021, "/healthz/ready")
            assert (status, body) == (500, "not ready, pending: certificates\n")
            used = proxy.certs.credentials(SpiffeId("cluster.local", "shop", "client"))
            assert used.certificate.serial_number == client.certificate.serial_number
            with pytest.raises(IdentityError, match="no certificate files for spiffe://cluster.local/ns/shop/sa/web"):
                proxy.certs.credentials(SpiffeId("cluster.local", "shop", "web"))
            _write_cert_manager(ca, SpiffeId("cluster.local", "shop", "web"), certs / "web")
            await proxy.reload("test")
            status, body = await asyncio.to_thread(LocalMesh.http_get, address, 15021, "/healthz/ready")
            assert (status, body) == (200, "ready\n")
        finally:
            await proxy.drain()
    asyncio.run(scenario())


def test_cert_dir_without_a_bundle_is_refused(setup):
    ca, options, certs, _ = setup
    _write_cert_manager(ca, SpiffeId("cluster.local", "shop", "client"), certs / "client")
    (certs / "client" / "ca.crt").unlink()
    with pytest.raises(IdentityError, match="no trust bundle"):
        NodeProxy(options)


def test_a_listener_that_cannot_bind_is_named(setup, tmp_path):
    ca, options, certs, address = setup
    _write_cert_manager(ca, SpiffeId("cluster.local", "shop", "client"), certs / "client")
    options.listen["outbound"] = ("192.0.2.1", 15001)          # not an address of this host

    async def scenario():
        with pytest.raises(ListenerError, match=r"cannot listen for outbound on 192\.0\.2\.1:15001"):
            await NodeProxy(options).start()
    asyncio.run(scenario())


def test_a_workload_without_a_certificate_is_refused_with_an_access_log_line(setup, caplog):
    ca, options, certs, address = setup
    _write_cert_manager(ca, SpiffeId("cluster.local", "shop", "client"), certs / "client")
    client_ip, web_ip = (address.rsplit(".", 2)[0] + suffix for suffix in (".1.1", ".1.2"))  # web has no files

    async def scenario():
        proxy = await NodeProxy(options).start()
        try:
            reader, writer = await asyncio.open_connection(address, 15080, local_addr=(web_ip, 0))
            # to the client workload: an HBONE tunnel, which web has no certificate to open
            writer.write(b"\x05\x01\x00\x05\x01\x00\x01" + bytes(map(int, client_ip.split("."))) +
                         (8080).to_bytes(2, "big"))
            assert await reader.readexactly(2) == b"\x05\x00"     # no authentication
            reply = await reader.read(100)
            writer.close()
            return reply
        finally:
            await proxy.drain()
    with caplog.at_level("INFO", logger="meshcore.access"):
        reply = asyncio.run(scenario())
    assert reply[:2] == b"\x05\x01" and len(reply) == 10       # general failure, the one reply
    lines = [r for r in caplog.records if r.name == "meshcore.access"]
    assert len(lines) == 1 and "no certificate files for spiffe://cluster.local/ns/shop/sa/web" in str(
        lines[0].__dict__.get("fields", {}).get("error"))
