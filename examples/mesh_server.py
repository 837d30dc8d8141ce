"""An in-process HBONE server: accepts mTLS tunnels for spiffe://cluster.local/ns/shop/sa/db
and answers each with the SHA-256 of what it received. Only shop/web may connect.

    python examples/mesh_server.py CA_DIR [PORT]       # CA_DIR from `meshcore ca init`
"""
import asyncio
import hashlib
import sys

from meshcore import Mesh
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId

SERVER = SpiffeId("cluster.local", "shop", "db")
ALLOWED = SpiffeId("cluster.local", "shop", "web")


async def handler(reader, writer, request):
    data = await reader.read()                      # until the client half-closes
    writer.write(f"{hashlib.sha256(data).hexdigest()} {len(data)} bytes from {request.peer_identity}\n".encode())
    await writer.drain()


async def main(ca_dir: str, port: int) -> None:
    store = CertificateStore(CertificateAuthority.load(ca_dir))
    async with Mesh(SERVER, store) as mesh:
        server = await mesh.serve(handler, "127.0.0.1", port,
                                  authorize=lambda request: request.peer_identity == ALLOWED)
        print(f"serving {SERVER} on {server.address[0]}:{server.address[1]}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15008))
