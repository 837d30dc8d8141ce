"""Socket facts a transparent proxy needs: the original destination of a redirected
connection, and whether a source address can be kept when dialing on a client's behalf."""
from __future__ import annotations

import ipaddress
import socket
import struct

SO_ORIGINAL_DST = 80            # linux/netfilter_ipv4.h (level SOL_IP); IP6T_SO_ORIGINAL_DST is the same number
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before nftables/iptables REDIRECT sent it to
    us; the local address when the connection was not redirected."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)
            port, = struct.unpack_from("!H", raw, 2)
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port, = struct.unpack_from("!H", raw, 2)
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
        return (str(mapped) if mapped else address), port
    except OSError:             # no conntrack entry: not redirected
        host, port = sock.getsockname()[:2]
        mapped = ipaddress.ip_address(host)
        if mapped.version == 6 and mapped.ipv4_mapped:
            host = str(mapped.ipv4_mapped)
        return host, port


class SourceBinder:
    """Keeps a client's source address on connections made for it when this host owns
    that address (loopback meshes, a pod's own network namespace); elsewhere it would
    need IP_TRANSPARENT and policy routing, so the proxy's address is used instead."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._local: dict[str, bool] = {}

    def local_addr(self, ip: str) -> tuple[str, int] | None:
        if not self.enabled:
            return None
        known = self._local.get(ip)
        if known is None:
            known = self._local[ip] = _can_bind(ip)
        return (ip, 0) if known else None


def _can_bind(ip: str) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False
