"""Examples in the shape of Istio's documentation, loaded from YAML and evaluated."""
from meshcore._core.policy import PolicyEngine
from meshcore.policy import PolicyTarget, load_authorization_policies

DOCS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/headers"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: ["9000", "9001"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
"""

SLEEP = "cluster.local/ns/default/sa/sleep"
HTTPBIN = PolicyTarget.of("foo", {"app": "httpbin", "version": "v1"})
TCP_ECHO = PolicyTarget.of("foo", {"app": "tcp-echo"})


def test_documentation_examples_at_the_waypoint():
    policies = load_authorization_policies(DOCS, "docs.yaml")
    assert [p.key for p in policies] == ["foo/httpbin", "foo/deny-method-get", "foo/ingress-policy",
                                         "foo/tcp-policy"]
    e = PolicyEngine(policies, layer="l7")
    ev = lambda w, p, src, port, **kw: e.evaluate(w, p, src, "10.0.0.9", port, **kw).allowed
    assert ev(HTTPBIN, SLEEP, "10.0.0.5", 8000, method="GET", path="/info/x")
    assert ev(HTTPBIN, "cluster.local/ns/test/sa/any", "10.0.0.5", 8000, method="POST", path="/data")
    assert not ev(HTTPBIN, SLEEP, "10.0.0.5", 8000, method="POST", path="/info")
    assert not ev(HTTPBIN, SLEEP, "10.0.0.5", 8000, method="GET", path="/headers")
    assert not ev(HTTPBIN, SLEEP, "5.6.7.8", 8000, method="GET", path="/info")
    assert ev(TCP_ECHO, None, "10.0.0.5", 9001) and not ev(TCP_ECHO, None, "10.0.0.5", 9002)


def test_documentation_examples_at_the_node_proxy():
    """At L4 the httpbin ALLOW needs methods/paths, so it never allows; the GET DENY has
    only L7 fields, so it denies httpbin entirely."""
    e = PolicyEngine(load_authorization_policies(DOCS, "docs.yaml"), layer="l4")
    d = e.evaluate(HTTPBIN, SLEEP, "10.0.0.5", "10.0.0.9", 8000)
    assert not d.allowed and d.policy == "foo/deny-method-get"
    assert e.evaluate(TCP_ECHO, None, "10.0.0.5", "10.0.0.9", 9000).allowed
