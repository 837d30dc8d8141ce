"""The TLS side of a test istiod: a root CA (the mesh's, as istiod's self-signed CA is)
and a serving certificate for istiod's names, written where ztunnel's defaults expect
them, plus a gRPC server on loopback that serves with it. The xDS and CA services the
tests run on it are in xds_server.py and ca_server.py."""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.identity.ca import CertificateAuthority, generate_key
from meshcore.identity.x509util import certs_pem, key_pem

ISTIOD_NAMES = ("istiod.istio-system.svc", "localhost")
# what istiod tolerates of a client's keepalive pings (its grpc-go enforcement policy:
# one every 15 s at most, only while a stream is open); grpcio's server default (one per
# 5 minutes without data) would send a 30 s pinger away with "too_many_pings"
ISTIOD_PING_POLICY = (("grpc.http2.min_ping_interval_without_data_ms", 15_000),
                      ("grpc.keepalive_permit_without_calls", 0))


@dataclass
class IstiodTls:
    ca: CertificateAuthority           # the mesh's CA: istiod signs workload certificates with it
    root_path: Path                    # root-cert.pem (what XDS_ROOT_CA / CA_ROOT_CA name)
    server_key_pem: bytes
    server_chain_pem: bytes

    @classmethod
    def create(cls, directory: Path, trust_domain: str = "cluster.local",
               ca: CertificateAuthority | None = None) -> "IstiodTls":
        ca = ca or CertificateAuthority.create(trust_domain)
        key = generate_key()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "istiod")]))
                .issuer_name(ca.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in ISTIOD_NAMES]
                    + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca.key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        root = directory / "root-cert.pem"
        root.write_bytes(certs_pem(ca.roots))
        return cls(ca, root, key_pem(key), certs_pem([cert, *ca.chain]))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.server_key_pem, self.server_chain_pem)])


async def start_grpc_server(tls: IstiodTls, handlers, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server on 127.0.0.1 serving `handlers` (generic handlers) over TLS."""
    server = grpc.aio.server(options=(("grpc.max_receive_message_length", 200 << 20),
                                      ("grpc.max_send_message_length", 200 << 20), *ISTIOD_PING_POLICY))
    for h in handlers:
        server.add_generic_rpc_handlers((h,))
    bound = server.add_secure_port(f"127.0.0.1:{port}", tls.server_credentials())
    await server.start()
    return server, bound
