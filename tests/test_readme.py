"""Every Python snippet of the README runs verbatim, started from the clone root as a
reader would run it (the checkout first on the import path), and prints what the
README says it prints."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
EXPECTED = {0: "b'HELLO THROUGH MTLS + HTTP/2 CONNECT'", 1: "CONNECT 10.244.1.17:8080\nb'hello'",
            2: "TLSv1_3", 3: "False shop/deny-legacy denied by DENY policy shop/deny-legacy"}


def test_the_readme_has_the_snippets_this_test_knows():
    assert len(SNIPPETS) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_from_the_clone_root(index):
    env = dict(os.environ)
    # where the package under test is installed, behind the checkout (as after `pip install .`)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(meshcore.__file__).parent.parent),
                                                    env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(EXPECTED[index]), proc.stdout
