"""`meshcore waypoint`: the mesh's L7 proxy (Istio ambient's waypoint). Node proxies send
traffic for a service or workload that uses it here over HBONE, the authority keeping
the original VIP:port; it applies the waypoint's policies and sends each request (or,
for traffic that is not HTTP, the whole connection) to an endpoint over HBONE with its
own identity."""
