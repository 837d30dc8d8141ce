"""Real TLS handshakes on loopback between two contexts; each side reports the peer
identity it accepted or the IdentityError it refused with."""
import asyncio
import ssl

from meshcore.errors import IdentityError
from meshcore.identity import handshake_error, verify_client, verify_server


async def handshake(server_ctx, client_ctx, *, expected=(), trust_domain="cluster.local",
                    payload=b"ping"):
    server_result = asyncio.get_running_loop().create_future()

    async def on_connection(reader, writer):
        try:
            await writer.start_tls(server_ctx, ssl_handshake_timeout=5)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            server_result.set_result(handshake_error(exc))
            writer.close()
            return
        try:
            ident = verify_client(writer.get_extra_info("ssl_object"), trust_domain)
        except IdentityError as exc:
            server_result.set_result(exc)
            writer.close()
            return
        server_result.set_result(ident)
        data = await reader.read(100)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_result = None
    try:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="", ssl_handshake_timeout=5)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            client_result = handshake_error(exc)
        else:
            try:
                client_result = verify_server(writer.get_extra_info("ssl_object"), expected)
                writer.write(payload)
                await writer.drain()
                echoed = await reader.read(100)
                if echoed != payload.upper():
                    client_result = IdentityError(f"server closed the connection ({echoed!r})", "closed")
            except IdentityError as exc:
                client_result = exc
            except (ssl.SSLError, ConnectionError) as exc:
                client_result = handshake_error(exc)
            writer.close()
        return await asyncio.wait_for(server_result, 5), client_result
    finally:
        server.close()
