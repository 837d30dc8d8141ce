"""The README's first command: `meshcore demo` runs a local mesh of separate processes
(CA, two node proxies, workloads), reports what happened, and leaves nothing running."""
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
    # through the waypoint: one path allowed, one denied by its policy, both in its access log
    assert "GET /orders       200 OK  'hello from web: GET /orders" in out
    assert "GET /admin/users  403 Forbidden  'RBAC: access denied'" in out
    assert "GET /admin/users -> 403  denied: denied by DENY policy shop/no-admin" in out
    assert "8388608/8388608 bytes in/out  connection complete" in out
    assert "response_flags=DENY  1.0" in out
    assert "certificates for spiffe://cluster.local/ns/shop/sa/web" in out
    assert "every process exited (web 0, outside 0, node-a 0, node-b 0, waypoint 0)" in out
    assert out.rstrip().endswith("all as expected")
    # the processes are gone: no commands that would need them, only how to keep them
    assert "try it yourself," not in out and "curl" not in out
    assert "`meshcore demo --keep` leaves the mesh running, with commands to try it yourself" in out
    # nothing left behind: every process of the mesh has exited
    pids = [line.split("(pid ")[1].split(")")[0] for line in out.splitlines() if "(pid " in line]
    assert len(pids) == 3 and not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.needs_tool("curl")
def test_meshcore_demo_keep_prints_commands_that_work_while_it_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "meshcore", "demo", "--keep", "--dir", str(tmp_path / "mesh")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "the mesh is running; Ctrl-C stops it" in line:
                break
        commands = [l.strip() for l in lines[next(i for i, l in enumerate(lines) if "try it yourself" in l):]]
        allowed, denied = commands[1], commands[2]
        got = subprocess.run(shlex.split(allowed, comments=True), capture_output=True, text=True, timeout=20)
        assert got.returncode == 0 and got.stdout.startswith("hello from web"), (allowed, got.stderr)
        got = subprocess.run(shlex.split(denied, comments=True), capture_output=True, text=True, timeout=20)
        assert got.returncode == 97, (denied, got.stderr)            # curl: the SOCKS5 request was refused
        explain = next(c for c in commands if c.startswith("meshcore policy explain"))
        got = subprocess.run([sys.executable, "-m", "meshcore", *shlex.split(explain)[1:]], env=env,
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 1 and got.stdout.startswith("DENY: denied by DENY policy shop/deny-jobs"), got
        at_waypoint = next(c for c in commands if "403 at the waypoint" in c)
        got = subprocess.run(shlex.split(at_waypoint, comments=True), capture_output=True, text=True, timeout=20)
        assert got.returncode == 0 and got.stdout == "RBAC: access denied", (at_waypoint, got)
        explain = next(c for c in commands if c.startswith("meshcore policy explain --waypoint"))
        got = subprocess.run([sys.executable, "-m", "meshcore", *shlex.split(explain)[1:]], env=env,
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 1 and "shop/no-admin" in got.stdout, got
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "every process exited (web 0, outside 0, node-a 0, node-b 0, waypoint 0)" in rest
