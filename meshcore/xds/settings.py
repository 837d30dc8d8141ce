"""Where istiod and its CA are and how to talk to them, from ztunnel's environment
(the variables Istio's ztunnel chart sets), with ztunnel's defaults and conventions:

    XDS_ADDRESS      istiod's xDS address (https://host:port or host:port)
    CA_ADDRESS       the CA's address (default: XDS_ADDRESS); FAKE_CA=true: no remote CA
    XDS_ROOT_CA      roots that verify istiod: a file, SYSTEM, or the PEM itself
    CA_ROOT_CA       the same for the CA      (both default ./var/run/secrets/istio/root-cert.pem)
    AUTH_TOKEN       bearer token: a file (read again for every call), or the token itself
                     (default ./var/run/secrets/tokens/istio-token when it exists, else none)
    ISTIO_META_CLUSTER_ID / CLUSTER_ID   cluster name (default Kubernetes), sent as `clusterid`
    CLUSTER_DOMAIN   default cluster.local
    XDS_ON_DEMAND    true: Address resources are asked for when a connection needs them
    POD_NAME, POD_NAMESPACE, INSTANCE_IP, NODE_NAME   the proxy's node id and metadata
    ISTIO_META_<K>=v   node metadata K=v;  ISTIO_METAJSON_<K>=<json>   node metadata K=<value>

ztunnel always dials istiod (its address defaults to istiod's in-cluster name, or
localhost); meshcore dials when XDS_ADDRESS is set or when it runs in Kubernetes
(KUBERNETES_SERVICE_HOST set), and is configured by files only otherwise (and with
XDS_ADDRESS set to the empty string, in a cluster too).
"""
from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshcore.errors import ConfigError

log = logging.getLogger("meshcore.xds")

DEFAULT_ROOT_CERT = "./var/run/secrets/istio/root-cert.pem"
DEFAULT_TOKEN = "./var/run/secrets/tokens/istio-token"
IN_CLUSTER_ISTIOD = "istiod.istio-system.svc:15012"
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_INSTANCE_IP = "1.1.1.1"          # ztunnel's placeholder when INSTANCE_IP is unset
SYSTEM_ROOTS = "SYSTEM"
META_PREFIX = "ISTIO_META_"
METAJSON_PREFIX = "ISTIO_METAJSON_"
_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("", "0", "f", "false", "no", "off")


@dataclass(frozen=True)
class RootCertificates:
    """How a server's certificate is verified: roots from a file (read again when it
    changes), the PEM given inline, or the system's roots."""
    path: str | None = None
    pem: bytes | None = None              # inline roots
    system: bool = False

    @classmethod
    def from_setting(cls, value: str) -> "RootCertificates":
        if value == SYSTEM_ROOTS:
            return cls(system=True)
        if Path(value).exists():
            return cls(path=value)
        if "-----BEGIN" in value:
            return cls(pem=value.encode())
        # ztunnel takes any other text as the content too; a path that does not exist yet
        # is far likelier a mistake (the secret is not mounted), so say so instead
        return cls(path=value)

    def load(self) -> bytes | None:
        """The PEM roots (None: gRPC's own bundle, where the system has no CA file). A
        missing file is a ConfigError naming it, so a caller can log it and retry later."""
        if self.system:
            # the operating system's trust store, as ztunnel's SYSTEM means
            cafile = ssl.get_default_verify_paths().cafile
            try:
                return Path(cafile).read_bytes() if cafile else None
            except OSError:
                return None
        if self.pem is not None:
            return self.pem
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the root certificates: {exc.strerror or exc}",
                              source=self.path) from None

    def stamp(self) -> tuple | None:
        """What changes when the roots file is replaced (a Kubernetes configmap update)."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def describe(self) -> str:
        return "system roots" if self.system else ("inline PEM" if self.pem is not None else self.path)


@dataclass(frozen=True)
class BearerToken:
    """The token sent as `authorization: Bearer ...`: a file (a projected service-account
    token, rotated by the kubelet: read for every call), the token itself, or none."""
    path: str | None = None
    value: str | None = None

    @classmethod
    def from_setting(cls, value: str | None) -> "BearerToken":
        if value is None:
            return cls(path=DEFAULT_TOKEN) if Path(DEFAULT_TOKEN).exists() else cls()
        if Path(value).exists():
            return cls(path=value)
        return cls(value=value)

    def read(self) -> str | None:
        if self.value is not None:
            return self.value
        if self.path is None:
            return None
        try:
            return Path(self.path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token: {exc.strerror or exc}", source=self.path) from None

    def describe(self) -> str:
        return self.path or ("inline token" if self.value else "no token")


def _flag(env: Mapping, name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (true or false)", source="environment")


def _address(env: Mapping, name: str, value: str) -> str:
    """host:port from "https://host:port", "host:port" or "[v6]:port"."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme not in ("https", "http"):
            raise ConfigError(f"{name}={value!r}: the scheme must be https (istiod speaks TLS)", source="environment")
        if scheme == "http":
            raise ConfigError(f"{name}={value!r}: meshcore reaches istiod over TLS only (https://, port 15012)",
                              source="environment")
        text = rest
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r} is not host:port (such as {IN_CLUSTER_ISTIOD})", source="environment")
    return text


def _metadata(env: Mapping) -> dict:
    meta: dict = {}
    for key, value in env.items():
        if key.startswith(META_PREFIX):
            meta[key[len(META_PREFIX):]] = value
    for key, value in env.items():
        if key.startswith(METAJSON_PREFIX):
            try:
                meta[key[len(METAJSON_PREFIX):]] = json.loads(value)
            except json.JSONDecodeError as exc:
                # as ztunnel: metadata istiod may not even read does not stop the proxy
                log.error("%s is not JSON (%s); left out of the node metadata", key, exc)
    return meta


@dataclass(frozen=True)
class ControlPlane:
    """Everything needed to reach istiod and its CA, and to introduce the proxy to them."""
    xds_address: str | None                # host:port; None: no xDS (files only)
    ca_address: str | None                 # host:port; None: certificates from elsewhere
    xds_roots: RootCertificates = RootCertificates(path=DEFAULT_ROOT_CERT)
    ca_roots: RootCertificates = RootCertificates(path=DEFAULT_ROOT_CERT)
    token: BearerToken = BearerToken()
    cluster_id: str = DEFAULT_CLUSTER_ID
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    on_demand: bool = False
    pod_name: str = ""
    pod_namespace: str = ""
    instance_ip: str = DEFAULT_INSTANCE_IP
    node_name: str = ""
    metadata: dict = field(default_factory=dict)     # ISTIO_META_* and ISTIO_METAJSON_*

    @classmethod
    def from_environment(cls, env: Mapping | None = None) -> "ControlPlane":
        """ztunnel's variables → settings; ConfigError naming the variable when one is wrong."""
        env = os.environ if env is None else env
        in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
        # set but empty: no xDS even in a cluster (a node proxy configured by files there)
        xds = env.get("XDS_ADDRESS", IN_CLUSTER_ISTIOD if in_cluster else "") or None
        xds_address = _address(env, "XDS_ADDRESS", xds) if xds else None
        if _flag(env, "FAKE_CA"):
            ca_address = None
        else:
            # set but empty: no remote CA (as ztunnel)
            ca = env.get("CA_ADDRESS", xds or "") or None
            ca_address = _address(env, "CA_ADDRESS", ca) if ca else None
        cluster_id = env.get("ISTIO_META_CLUSTER_ID") or env.get("CLUSTER_ID") or DEFAULT_CLUSTER_ID
        return cls(xds_address=xds_address, ca_address=ca_address,
                   xds_roots=RootCertificates.from_setting(env.get("XDS_ROOT_CA") or DEFAULT_ROOT_CERT),
                   ca_roots=RootCertificates.from_setting(env.get("CA_ROOT_CA") or DEFAULT_ROOT_CERT),
                   token=BearerToken.from_setting(env.get("AUTH_TOKEN") or None),
                   cluster_id=cluster_id,
                   cluster_domain=env.get("CLUSTER_DOMAIN") or DEFAULT_CLUSTER_DOMAIN,
                   on_demand=_flag(env, "XDS_ON_DEMAND"),
                   pod_name=env.get("POD_NAME", ""), pod_namespace=env.get("POD_NAMESPACE", ""),
                   instance_ip=env.get("INSTANCE_IP") or DEFAULT_INSTANCE_IP, node_name=env.get("NODE_NAME", ""),
                   metadata=_metadata(env))

    def node_id(self) -> str:
        """ztunnel's node id, which istiod parses (type~ip~pod.namespace~namespace.svc.domain)."""
        ns = self.pod_namespace
        return f"ztunnel~{self.instance_ip}~{self.pod_name}.{ns}~{ns}.svc.cluster.local"

    def node_metadata(self) -> dict:
        """The node's metadata struct: who the proxy is, plus ISTIO_META_* (CLUSTER_ID among them)."""
        meta = {"NAME": self.pod_name, "NAMESPACE": self.pod_namespace, "INSTANCE_IPS": self.instance_ip,
                "NODE_NAME": self.node_name}
        meta.update(self.metadata)
        return meta

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for every call: the bearer token (read now: it rotates) and the cluster."""
        token = self.token.read()
        out = (("clusterid", self.cluster_id),)
        return ((("authorization", f"Bearer {token}"),) if token else ()) + out
