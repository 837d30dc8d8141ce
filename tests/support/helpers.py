"""Loopback workloads and credentials for transport tests."""
import asyncio
import contextlib
import hashlib
import socket

from meshcore.identity import SpiffeId
from meshcore.localworkload import echo

# the identities of the transport tests (here, not in conftest.py: several test folders
# have a conftest module, and a bare `import conftest` finds whichever loaded first)
CLIENT = SpiffeId("cluster.local", "shop", "web")
SERVER = SpiffeId("cluster.local", "shop", "db")


async def tcp_echo_server():
    """Echoes; half-closes when the client does."""
    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def tcp_talker_server(payload: bytes, events: list):
    """Sends `payload` first and half-closes, then reads until EOF; records what happened."""
    async def talk(reader, writer):
        writer.write(payload)
        writer.write_eof()
        try:
            got = await reader.read()
            events.append(("received", len(got), hashlib.sha256(got).hexdigest()))
        except ConnectionResetError:
            events.append(("reset",))
        writer.close()
    return await asyncio.start_server(talk, "127.0.0.1", 0)


async def wait_until(predicate, timeout: float, interval: float = 0.01) -> None:
    """Poll `predicate` until it holds or `timeout` passes (the caller asserts after)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(interval)


def port_of(server):
    return server.sockets[0].getsockname()[1]


async def exchange(reader, writer, payload: bytes):
    """Write payload and half-close while reading everything back: (bytes, sha256)."""
    async def send():
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
    sender = asyncio.ensure_future(send())
    h = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 16):
        h.update(data)
        n += len(data)
    await sender
    return n, h.hexdigest()


@contextlib.asynccontextmanager
async def relay_setup(ca, server_options=None, mesh_options=None):
    """A TCP echo upstream, an HboneServer relaying to it (as SERVER), and a client
    Mesh (as CLIENT): (server, echo, mesh)."""
    from meshcore import Mesh
    from meshcore.aio import HboneServer
    from meshcore.identity import CertificateStore

    echo = await tcp_echo_server()
    try:
        async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local",
                               **(server_options or {})) as server:
            await server.start()
            async with Mesh(CLIENT, CertificateStore(ca), **(mesh_options or {})) as mesh:
                yield server, echo, mesh
    finally:
        echo.close()


@contextlib.asynccontextmanager
async def server_and_h2_client(ca, **server_options):
    """A started HboneServer (as SERVER) and an independent h2 HBONE client connected
    to it (as CLIENT): (server, client)."""
    from h2hbone import H2TunnelClient, h2_client
    from meshcore.aio import HboneServer
    from meshcore.identity import CertificateStore

    async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local",
                           **server_options) as server:
        await server.start()
        yield server, H2TunnelClient(await h2_client(*server.address, CertificateStore(ca).client_context(CLIENT)))


@contextlib.contextmanager
def listener_that_never_accepts():
    """An address whose accept queue is full: connects to it hang in SYN_SENT."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = [socket.socket() for _ in range(4)]
    for s in fillers:
        s.setblocking(False)
        s.connect_ex(full.getsockname())
    try:
        yield full.getsockname()
    finally:
        for s in fillers:
            s.close()
        full.close()


def cert_with_sans(ca, sans):
    """Credentials whose leaf, signed by `ca`, carries exactly the subject alternative
    names `sans` (None: no SAN extension at all): what a peer presenting a certificate
    without a usable SPIFFE id sends."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from meshcore.identity import Credentials
    from meshcore.identity.ca import generate_key
    key = generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), True)
    return Credentials(SpiffeId("cluster.local", "x", "x"), key, (builder.sign(ca.key, hashes.SHA256()),))
