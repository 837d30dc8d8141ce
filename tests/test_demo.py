"""The README's first command: `meshcore demo` runs a local mesh of separate processes
(CA, two node proxies, workloads), reports what happened, and leaves nothing running."""
import os
import subprocess
import sys
from pathlib import Path

import meshcore


def test_meshcore_demo_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-m", "meshcore", "demo", "--dir", str(tmp_path / "mesh")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "200 OK  'hello from web: GET / HTTP/1.1 from 127." in out
    assert "8 MiB there and back" in out and "sha256 match" in out
    assert "SOCKS5 reply 2 (not allowed by the mesh)" in out
    assert "401: policy rejection: denied by DENY policy shop/deny-jobs" in out
    assert "200 OK  'hello from outside" in out
    assert "8388608/8388608 bytes in/out  connection complete" in out
    assert "response_flags=DENY  1.0" in out
    assert "certificates for spiffe://cluster.local/ns/shop/sa/web" in out
    assert "every process exited (web 0, outside 0, node-a 0, node-b 0)" in out
    assert out.rstrip().endswith("all as expected")
    # nothing left behind: every process of the mesh has exited
    pids = [line.split("(pid ")[1].split(")")[0] for line in out.splitlines() if "(pid " in line]
    assert len(pids) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in pids)
