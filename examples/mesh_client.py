"""An in-process HBONE client: opens an mTLS tunnel as spiffe://cluster.local/ns/shop/sa/web
to the server of mesh_server.py and sends a file (or stdin) through it.

    python examples/mesh_client.py CA_DIR [PORT] < some-file
"""
import asyncio
import sys

from meshcore import Mesh
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId

CLIENT = SpiffeId("cluster.local", "shop", "web")
SERVER = SpiffeId("cluster.local", "shop", "db")


async def main(ca_dir: str, port: int) -> None:
    store = CertificateStore(CertificateAuthority.load(ca_dir))
    async with Mesh(CLIENT, store) as mesh:
        # the destination address is what the server's node would relay to; this server
        # answers by itself, so any address works
        reader, writer = await mesh.open_tunnel("127.0.0.1", 8080, expected=SERVER, via=("127.0.0.1", port))
        writer.write(sys.stdin.buffer.read())
        writer.write_eof()
        print((await reader.read()).decode(), end="")
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15008))
