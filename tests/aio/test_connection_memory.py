"""An idle HBONE connection that has carried data gives its buffers back: the server,
in its own process, is measured by benchmarks/connection_memory.py (200 connections,
one 1 MiB tunnel each). The event loop's TLS layer kept ~560 KiB per such connection."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "connection_memory.py"


def test_idle_connection_after_traffic_stays_small(tmp_path):
    out = tmp_path / "memory.json"
    subprocess.run([sys.executable, str(BENCH), "--connections", "200", "--pending", "0",
                    "--traffic", "1024", "--modes", "meshcore", "--json", str(out)],
                   check=True, capture_output=True, timeout=120, cwd=tmp_path)
    row = json.loads(out.read_text())[0]
    assert row["per_idle_connection_kib"] < 64, row
    assert row["per_used_connection_kib"] < 64, row
