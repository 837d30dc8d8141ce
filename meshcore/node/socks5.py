"""SOCKS5 (RFC 1928) as the node proxy speaks it: no authentication, CONNECT only,
IPv4, IPv6 and domain-name destinations.

The parsers are pure functions over the bytes received so far; Socks5Handshake is
the asyncio protocol that runs them and hands the connection on once the client
has named its destination. The reply to the request is sent by whoever dials.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("meshcore.socks5")

VERSION = 5
NO_AUTH, NO_ACCEPTABLE = 0x00, 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_NAME, ATYP_IPV6 = 0x01, 0x03, 0x04
# reply codes
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, NETWORK_UNREACHABLE, HOST_UNREACHABLE, REFUSED = 0, 1, 2, 3, 4, 5
COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 7, 8
HANDSHAKE_TIMEOUT = 10.0


class Socks5Error(Exception):
    def __init__(self, message: str, reply: int | None = None):
        super().__init__(message)
        self.reply = reply                       # reply code to send, if the request stage was reached


def parse_greeting(data: bytes) -> tuple[int, bytes] | None:
    """(bytes used, offered methods), or None when more bytes are needed."""
    if len(data) < 2:
        return None
    if data[0] != VERSION:
        raise Socks5Error(f"not SOCKS5 (version byte {data[0]})")
    n = data[1]
    if n == 0:
        raise Socks5Error("greeting offers no authentication method")
    if len(data) < 2 + n:
        return None
    return 2 + n, bytes(data[2:2 + n])


def parse_request(data: bytes) -> tuple[int, str, int] | None:
    """(bytes used, host, port) of a CONNECT request, or None when more bytes are needed."""
    if len(data) < 5:
        return None
    version, command, _, atyp = data[:4]
    if version != VERSION:
        raise Socks5Error(f"request has version byte {version}", GENERAL_FAILURE)
    if command != CONNECT:
        raise Socks5Error(f"command {command} is not supported (CONNECT only)", COMMAND_NOT_SUPPORTED)
    if atyp == ATYP_IPV4:
        end = 4 + 4
        if len(data) < end + 2:
            return None
        host = socket.inet_ntoa(data[4:end])      # ipaddress's text, without its Python calls
    elif atyp == ATYP_IPV6:
        end = 4 + 16
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(data[4:end])))
    elif atyp == ATYP_NAME:
        n = data[4]
        end = 5 + n
        if len(data) < end + 2:
            return None
        try:
            host = bytes(data[5:end]).decode("ascii")
        except UnicodeDecodeError:
            raise Socks5Error("domain name is not ASCII", ADDRESS_NOT_SUPPORTED) from None
        if not host:
            raise Socks5Error("empty domain name", ADDRESS_NOT_SUPPORTED)
    else:
        raise Socks5Error(f"address type {atyp} is not supported", ADDRESS_NOT_SUPPORTED)
    port, = struct.unpack_from("!H", data, end)
    if port == 0:
        raise Socks5Error("port 0", ADDRESS_NOT_SUPPORTED)
    return end + 2, host, port


def reply(code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    ip = _listener_ip(bound[0])
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((VERSION, code, 0, atyp)) + ip.packed + struct.pack("!H", bound[1])


# the SOCKS listener's own addresses, parsed once for every success reply
_listener_ip = functools.lru_cache(maxsize=64)(ipaddress.ip_address)


class Socks5Handshake(asyncio.Protocol):
    """Reads the greeting and the request; then `on_request(transport, host, port)` owns
    the connection (reading paused). Bad input is answered and closed."""

    def __init__(self, on_request: Callable[[asyncio.Transport, str, int], None],
                 timeout: float = HANDSHAKE_TIMEOUT):
        self.on_request = on_request
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.greeted = False
        self._timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        log.info("SOCKS5 client %s sent no complete request in %g s",
                 self.transport.get_extra_info("peername"), self.timeout)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if not self.greeted:
                got = parse_greeting(self.buffer)
                if got is None:
                    return
                used, methods = got
                del self.buffer[:used]
                if NO_AUTH not in methods:
                    self.transport.write(bytes((VERSION, NO_ACCEPTABLE)))
                    raise Socks5Error("client offers no method meshcore accepts (no authentication)")
                self.greeted = True
                self.transport.write(bytes((VERSION, NO_AUTH)))
            got = parse_request(self.buffer)
            if got is None:
                if len(self.buffer) > 262:
                    raise Socks5Error("request too long", GENERAL_FAILURE)
                return
            used, host, port = got
            if len(self.buffer) > used:
                # RFC 1928: the client waits for the reply before sending data
                raise Socks5Error("data sent before the reply", GENERAL_FAILURE)
        except Socks5Error as exc:
            self._refuse(exc)
            return
        self._timer.cancel()
        self.transport.pause_reading()
        self.on_request(self.transport, host, port)

    def _refuse(self, exc: Socks5Error) -> None:
        self._timer.cancel()
        log.info("SOCKS5 client %s refused: %s", self.transport.get_extra_info("peername"), exc)
        if exc.reply is not None:
            self.transport.write(reply(exc.reply))
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
