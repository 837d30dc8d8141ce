"""Run a node proxy on this machine with the sample configuration (README.md here says
what to send through it and how to stop it).

    python examples/node-proxy/launch.py     # node-a on 127.0.0.1; its built-in CA in ~/.local/state/meshcore

Then, from the frontend workload's address, through the SOCKS5 listener:

    python -m meshcore.localworkload --name checkout --http 127.0.10.2:8080 &
    curl --interface 127.0.10.1 --socks5-hostname 127.0.0.1:15080 http://checkout.shop.svc.cluster.local/
    curl http://127.0.0.1:15000/config_dump
    curl http://127.0.0.1:15020/metrics

Edit mesh.yaml or policy.yaml while it runs: a good change applies at once, a broken
one is refused with file, document and field, and the running configuration stays.
Ctrl-C (or SIGTERM, or POST /quitquitquit on the admin port) drains and stops it.
"""
import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
# the built-in CA goes where `meshcore node` puts it by default ($MESHCORE_STATE_DIR, else
# $XDG_STATE_HOME/meshcore, else ~/.local/state/meshcore); extra arguments go to the node
args = ["meshcore", "node", "--node-name", "node-a",
        "--config", str(here / "mesh.yaml"), "--config", str(here / "policy.yaml"), *sys.argv[1:]]
os.execvp(sys.executable, [sys.executable, "-m", *args])
