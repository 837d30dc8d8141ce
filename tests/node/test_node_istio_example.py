"""examples/node-proxy/kubernetes/istio: the DaemonSet that Istio's ztunnel chart renders
(default values, profile ambient) with meshcore's image and command. What must hold for
it to stand in for ztunnel: ztunnel's environment, identity, token and root certificate
where meshcore looks for them, and the probe, port and pod settings of the chart."""
import posixpath
from pathlib import Path

import yaml

from meshcore.cli import build_parser
from meshcore.node.cli import options_from
from meshcore.xds.settings import DEFAULT_ROOT_CERT, DEFAULT_TOKEN, ControlPlane

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-proxy"
ISTIO = EXAMPLE / "kubernetes" / "istio"
ISTIOD = "istiod.istio-system.svc:15012"

# what ztunnel's chart sets with its defaults and profile ambient
CHART_ENV = {"CA_ADDRESS", "XDS_ADDRESS", "RUST_LOG", "RUST_BACKTRACE", "ISTIO_META_CLUSTER_ID", "INPOD_ENABLED",
             "TERMINATION_GRACE_PERIOD_SECONDS", "POD_NAME", "POD_NAMESPACE", "NODE_NAME", "INSTANCE_IP",
             "SERVICE_ACCOUNT", "ISTIO_META_ENABLE_HBONE", "ZTUNNEL_CPU_LIMIT", "ZTUNNEL_RESOURCE_CPU_REQUEST"}
FIELD_REFS = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName",
              "INSTANCE_IP": "status.podIP", "SERVICE_ACCOUNT": "spec.serviceAccountName"}


def _docs() -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all((ISTIO / "daemonset.yaml").read_text())}


def _pod() -> dict:
    return _docs()["DaemonSet"]["spec"]["template"]["spec"]


def _container() -> dict:
    c, = _pod()["containers"]
    return c


def _env_in_pod() -> dict:
    """The container's environment as the kubelet fills it in, on node-a in pod ztunnel-x."""
    pod = {"metadata.name": "ztunnel-x", "metadata.namespace": "istio-system", "spec.nodeName": "node-a",
           "status.podIP": "10.244.1.5", "spec.serviceAccountName": _pod()["serviceAccountName"]}
    out = {}
    for e in _container()["env"]:
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            out[e["name"]] = pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def test_service_account_and_daemonset_are_ztunnels_in_istio_system():
    docs = _docs()
    assert set(docs) == {"ServiceAccount", "DaemonSet"}
    for doc in docs.values():
        assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == ("ztunnel", "istio-system")
    ds = docs["DaemonSet"]
    template = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "ztunnel"}
    assert template["metadata"]["labels"]["app"] == "ztunnel"
    # never captured or injected itself
    assert template["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = template["spec"]
    assert pod["serviceAccountName"] == "ztunnel"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert "hostNetwork" not in pod                      # as the chart: the pod's own network namespace
    assert {"effect": "NoSchedule", "operator": "Exists"} in pod["tolerations"]
    assert {"effect": "NoExecute", "operator": "Exists"} in pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]


def test_environment_is_the_charts():
    c = _container()
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)) and CHART_ENV <= set(names), CHART_ENV - set(names)
    for name, path in FIELD_REFS.items():
        e, = (e for e in c["env"] if e["name"] == name)
        assert e["valueFrom"]["fieldRef"]["fieldPath"] == path
    env = _env_in_pod()
    assert env["XDS_ADDRESS"] == env["CA_ADDRESS"] == ISTIOD
    assert env["ISTIO_META_CLUSTER_ID"] == "Kubernetes" and env["ISTIO_META_ENABLE_HBONE"] == "true"
    assert env["TERMINATION_GRACE_PERIOD_SECONDS"] == str(_pod()["terminationGracePeriodSeconds"])
    # meshcore reads it as ztunnel does
    plane = ControlPlane.from_environment(env)
    assert (plane.xds_address, plane.ca_address, plane.cluster_id) == (ISTIOD, ISTIOD, "Kubernetes")
    assert plane.node_id() == "ztunnel~10.244.1.5~ztunnel-x.istio-system~istio-system.svc.cluster.local"
    assert plane.node_metadata()["ENABLE_HBONE"] == "true"


def test_token_and_root_certificate_are_where_meshcore_reads_them():
    pod, c = _pod(), _container()
    # relative defaults, from the working directory: the image's WORKDIR, not overridden here
    assert "WORKDIR /\n" in (EXAMPLE / "Dockerfile").read_text()
    cwd = c.get("workingDir", "/")
    assert cwd == "/"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    token_path = posixpath.normpath(posixpath.join(cwd, DEFAULT_TOKEN))
    source, = volumes["istio-token"]["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "istio-ca" and token["expirationSeconds"] == 43200
    assert posixpath.join(mounts["istio-token"], token["path"]) == token_path == "/var/run/secrets/tokens/istio-token"

    root_path = posixpath.normpath(posixpath.join(cwd, DEFAULT_ROOT_CERT))
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}   # istiod's, key root-cert.pem
    assert posixpath.join(mounts["istiod-ca-cert"], "root-cert.pem") == root_path

    assert volumes["cni-ztunnel-sock-dir"]["hostPath"] == {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}
    assert mounts["cni-ztunnel-sock-dir"] == "/var/run/ztunnel"
    assert "emptyDir" in volumes["tmp"] and mounts["tmp"] == "/tmp"


def test_command_is_meshcore_node_and_the_probe_reaches_it(monkeypatch):
    c = _container()
    assert 'ENTRYPOINT ["meshcore"]' in (EXAMPLE / "Dockerfile").read_text() and "command" not in c
    assert c["args"][0] == "node"
    assert c["readinessProbe"]["httpGet"] == {"port": 15021, "path": "/healthz/ready"}
    assert c["ports"] == [{"containerPort": 15020, "name": "ztunnel-stats", "protocol": "TCP"}]
    annotations = _docs()["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15020" and annotations["prometheus.io/scrape"] == "true"
    # the options `meshcore node` takes from these arguments and this environment
    for name, value in _env_in_pod().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_XDS", "workloads: []")     # the xDS client's part is not tested here
    args = build_parser().parse_args(c["args"])
    options = options_from(args)
    listen = options.listeners()
    # the kubelet probes the pod's IP: readiness and metrics may not be on loopback
    assert listen["readiness"] == ("0.0.0.0", 15021) and listen["metrics"] == ("0.0.0.0", 15020)
    assert listen["socks5"] == ("127.0.0.1", 15080) and listen["admin"] == ("127.0.0.1", 15000)
    assert listen["inbound"] is None          # no pod's address exists in this pod: readiness would wait forever
    assert options.node_name == "node-a" and options.own_identity == ("istio-system", "ztunnel")


def test_security_context_and_resources_are_the_charts():
    c = _container()
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 1337, False)
    assert c["resources"] == {"requests": {"cpu": "200m", "memory": "512Mi"}}


def test_image_is_built_with_the_istio_extra():
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert '"$(ls /wheels/*.whl)[istio]"' in dockerfile
    image = _container()["image"]
    build = f"docker build -f examples/node-proxy/Dockerfile -t {image} ."
    assert build in dockerfile and build in (ISTIO / "README.md").read_text()
