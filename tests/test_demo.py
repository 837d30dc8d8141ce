"""The README's first command: `meshcore demo` runs a real loopback tunnel and succeeds."""
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
    assert "-> 503" in proc.stdout and "all as expected" in proc.stdout
