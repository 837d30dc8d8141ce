"""examples/mesh_server.py and examples/mesh_client.py, run as a user would."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import meshcore
from meshcore.identity import CertificateAuthority

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_client_server_examples(tmp_path):
    CertificateAuthority.create("cluster.local").save(tmp_path / "ca")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    server = subprocess.Popen([sys.executable, str(EXAMPLES / "mesh_server.py"), str(tmp_path / "ca"), str(port)],
                              stdout=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        assert b"serving" in server.stdout.readline()
        client = subprocess.run([sys.executable, str(EXAMPLES / "mesh_client.py"), str(tmp_path / "ca"), str(port)],
                                input=b"hello mesh\n", capture_output=True, env=env, cwd=tmp_path, timeout=60)
        assert client.returncode == 0, client.stderr
        assert b"11 bytes from spiffe://cluster.local/ns/shop/sa/web" in client.stdout
    finally:
        server.kill()
        server.wait()
