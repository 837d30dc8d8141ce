"""HTTP/2 requests over an HBONE connection (mTLS, SPIFFE identities), beside tunnels:
a server that answers requests and a client that sends them, in one process with a
throwaway CA.

    python examples/http_over_hbone.py
"""
import asyncio

from meshcore.aio import HboneServer, dial
from meshcore.aio.request import ServerExchange, request, send_request
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId

WEB = SpiffeId("cluster.local", "shop", "web")
API = SpiffeId("cluster.local", "shop", "api")


async def handle(exchange: ServerExchange) -> None:
    """Echoes the body upper-cased; 100 Continue first when the client asks for it."""
    if exchange.header("expect") == b"100-continue":
        exchange.inform(100)
    body = await exchange.read_all()
    exchange.respond(200, [("content-type", "text/plain"), ("x-caller", str(exchange.peer_identity))])
    await exchange.write(f"{exchange.method} {exchange.path}: ".encode() + body.upper())
    await exchange.end(trailers=[("x-bytes-read", str(len(body)))])


async def main() -> None:
    certificates = CertificateStore(CertificateAuthority.create("cluster.local"))
    async with HboneServer(certificates.server_context(API), "cluster.local", request_handler=handle) as server:
        await server.start()
        connection = await dial(*server.address, certificates.client_context(WEB), [API])

        response, body, trailers = await request(connection, "GET", "/hello", authority="api.shop:8080")
        print(response.status, response.header("x-caller").decode(), body.decode(), trailers)

        exchange = send_request(connection, "POST", "/orders", authority="api.shop:8080",
                                headers=[("expect", "100-continue"), ("te", "trailers")])
        for part in (b"two ", b"parts"):
            await exchange.write(part)
        await exchange.end()
        response = await exchange.response()
        print([r.status for r in exchange.informational], response.status)
        async for chunk in exchange:
            print(chunk.decode())
        print(exchange.trailers)
        connection.close()


if __name__ == "__main__":
    asyncio.run(main())
