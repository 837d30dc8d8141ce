"""Istio and Envoy protos (package names and field numbers as upstream) and their generated modules."""
