"""The skip policy itself: a missing tool skips locally and fails in CI."""
import subprocess
import sys
import textwrap
from pathlib import Path


def run_pytest(tmp_path, env_ci):
    here = Path(__file__).parent
    (tmp_path / "conftest.py").write_text((here / "conftest.py").read_text())
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "loops.py").write_text((here / "support" / "loops.py").read_text())
    (tmp_path / "test_tool.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.needs_tool("definitely-not-a-real-tool-xyz")
        def test_uses_tool():
            pass
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    needs_tool(name): external program\n")
    env = {"PATH": "/usr/bin:/bin", "CI": "true" if env_ci else "false"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_missing_tool_skips_locally(tmp_path):
    proc = run_pytest(tmp_path, env_ci=False)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout


def test_missing_tool_fails_in_ci(tmp_path):
    proc = run_pytest(tmp_path, env_ci=True)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed" in proc.stdout or "1 error" in proc.stdout, proc.stdout
    assert "skipped in CI" in proc.stdout
