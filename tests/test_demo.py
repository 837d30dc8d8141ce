"""The README's first command: `meshcore demo` runs a real mTLS mesh on loopback and succeeds."""
import os
import subprocess
import sys
from pathlib import Path

import meshcore


def test_meshcore_demo_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-m", "meshcore.cli", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("sha256 match") == 4
    assert "401  denied by policy" in proc.stdout and "503  nothing listens there" in proc.stdout
    assert proc.stdout.rstrip().endswith("all as expected")
