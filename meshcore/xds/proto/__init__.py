"""Istio and Envoy protos (package names and field numbers as upstream) and their generated modules.

Only the messages and fields meshcore reads are declared, under upstream's full names
(`envoy.service.discovery.v3.DeltaDiscoveryRequest`, `istio.workload.Address`, ...): the
type URLs and the wire format depend on them. They live in protobuf's default
descriptor pool, so a process that also loads Envoy's or Istio's own generated modules
for these packages would see two definitions of one name; use one or the other per
process.
"""
