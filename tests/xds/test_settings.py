"""ztunnel's control-plane environment → meshcore's settings, with ztunnel's defaults."""
import pytest

from meshcore.errors import ConfigError
from meshcore.xds.settings import DEFAULT_ROOT_CERT, ControlPlane


def test_no_istiod_outside_kubernetes_without_xds_address():
    plane = ControlPlane.from_environment({})
    assert plane.xds_address is None and plane.ca_address is None
    assert plane.cluster_id == "Kubernetes" and plane.cluster_domain == "cluster.local"
    assert plane.xds_roots.path == DEFAULT_ROOT_CERT and not plane.on_demand


def test_inside_kubernetes_istiod_is_the_default_and_an_empty_address_turns_it_off():
    plane = ControlPlane.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert plane.xds_address == "istiod.istio-system.svc:15012" == plane.ca_address
    off = ControlPlane.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "XDS_ADDRESS": ""})
    assert off.xds_address is None and off.ca_address is None


@pytest.mark.parametrize("value, expected", [
    ("https://istiod.istio-system.svc:15012", "istiod.istio-system.svc:15012"),
    ("istiod-rev.istio-system.svc:15012", "istiod-rev.istio-system.svc:15012"),
    ("https://[::1]:15012/", "[::1]:15012"),
])
def test_addresses_as_ztunnel_takes_them(value, expected):
    plane = ControlPlane.from_environment({"XDS_ADDRESS": value})
    assert plane.xds_address == expected and plane.ca_address == expected


@pytest.mark.parametrize("value, why", [
    ("http://istiod:15010", "TLS only"),
    ("ftp://istiod:15012", "scheme must be https"),
    ("istiod", "not host:port"),
    ("istiod:99999", "not host:port"),
])
def test_bad_addresses_name_the_variable(value, why):
    with pytest.raises(ConfigError, match=why) as info:
        ControlPlane.from_environment({"XDS_ADDRESS": value})
    assert "XDS_ADDRESS" in str(info.value)


def test_ca_address_defaults_to_xds_and_fake_ca_turns_it_off():
    env = {"XDS_ADDRESS": "istiod:15012"}
    assert ControlPlane.from_environment({**env, "CA_ADDRESS": "ca:15012"}).ca_address == "ca:15012"
    assert ControlPlane.from_environment({**env, "FAKE_CA": "true"}).ca_address is None
    assert ControlPlane.from_environment({**env, "CA_ADDRESS": ""}).ca_address is None
    with pytest.raises(ConfigError, match="FAKE_CA='maybe' is not a boolean"):
        ControlPlane.from_environment({**env, "FAKE_CA": "maybe"})


def test_roots_and_token_are_files_system_or_the_content_itself(tmp_path):
    root = tmp_path / "root.pem"
    root.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    token = tmp_path / "token"
    token.write_text("jwt-1\n")
    plane = ControlPlane.from_environment({"XDS_ROOT_CA": str(root), "CA_ROOT_CA": "SYSTEM",
                                           "AUTH_TOKEN": str(token)})
    assert plane.xds_roots.path == str(root) and plane.xds_roots.load() == root.read_bytes()
    assert plane.ca_roots.system
    assert ("authorization", "Bearer jwt-1") in plane.call_metadata()
    token.write_text("jwt-2")                   # the kubelet rotated it: the next call reads it again
    assert ("authorization", "Bearer jwt-2") in plane.call_metadata()
    inline = ControlPlane.from_environment({"XDS_ROOT_CA": root.read_text(), "AUTH_TOKEN": "static-token"})
    assert inline.xds_roots.pem == root.read_bytes()
    assert ("authorization", "Bearer static-token") in inline.call_metadata()
    missing = ControlPlane.from_environment({"XDS_ROOT_CA": str(tmp_path / "not-mounted.pem")})
    with pytest.raises(ConfigError, match="not-mounted.pem.*cannot read"):
        missing.xds_roots.load()


def test_no_token_means_no_authorization_header_and_the_cluster_always_goes():
    plane = ControlPlane.from_environment({"CLUSTER_ID": "east"})
    assert plane.call_metadata() == (("clusterid", "east"),)


def test_node_id_and_metadata_as_istiod_reads_them():
    plane = ControlPlane.from_environment({
        "POD_NAME": "ztunnel-x1", "POD_NAMESPACE": "istio-system", "INSTANCE_IP": "10.0.0.7", "NODE_NAME": "n1",
        "ISTIO_META_CLUSTER_ID": "west", "CLUSTER_ID": "ignored", "ISTIO_META_ENABLE_HBONE": "true",
        "ISTIO_METAJSON_LABELS": '{"app": "ztunnel"}'})
    assert plane.node_id() == "ztunnel~10.0.0.7~ztunnel-x1.istio-system~istio-system.svc.cluster.local"
    assert plane.cluster_id == "west"
    assert plane.node_metadata() == {"NAME": "ztunnel-x1", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.0.0.7",
                                     "NODE_NAME": "n1", "CLUSTER_ID": "west", "ENABLE_HBONE": "true",
                                     "LABELS": {"app": "ztunnel"}}

def test_bad_json_metadata_is_left_out_and_logged(caplog):
    plane = ControlPlane.from_environment({"ISTIO_METAJSON_BAD": "{", "ISTIO_META_GOOD": "1"})
    assert plane.metadata == {"GOOD": "1"}
    assert "ISTIO_METAJSON_BAD is not JSON" in caplog.text


def test_system_roots_are_the_operating_systems():
    import ssl
    plane = ControlPlane.from_environment({"XDS_ROOT_CA": "SYSTEM"})
    cafile = ssl.get_default_verify_paths().cafile
    if cafile:
        assert plane.xds_roots.load() == open(cafile, "rb").read()
    else:
        assert plane.xds_roots.load() is None


def test_a_node_told_to_dial_istiod_without_grpcio_says_which_extra(monkeypatch):
    import importlib

    from meshcore.cli import build_parser
    from meshcore.node.cli import options_from
    real = importlib.import_module

    def without_grpc(name, *args):
        if name == "grpc":
            raise ImportError("No module named 'grpc'", name="grpc")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", without_grpc)
    monkeypatch.setenv("XDS_ADDRESS", "istiod.istio-system.svc:15012")
    args = build_parser().parse_args(["node"])
    with pytest.raises(ConfigError, match=r"because XDS_ADDRESS is set, but grpc is not installed: "
                                          r"pip install 'meshcore\[istio\]'"):
        options_from(args)


def test_a_node_configured_by_files_never_loads_grpc(tmp_path):
    import subprocess
    import sys
    code = ("import sys\nfrom meshcore.cli import build_parser\nfrom meshcore.node.cli import options_from\n"
            "from meshcore.node.proxy import NodeProxy\n"
            f"o = options_from(build_parser().parse_args(['node', '--config', {str(tmp_path / 'm.yaml')!r}, "
            f"'--state-dir', {str(tmp_path)!r}]))\n"
            "p = NodeProxy(o)\nassert o.control_plane is None and p.xds is None\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') or m.startswith('meshcore.xds.') and m != 'meshcore.xds.settings'))")
    (tmp_path / "m.yaml").write_text("workloads: []\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("XDS_ADDRESS", "CA_ADDRESS", "KUBERNETES_SERVICE_HOST")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
