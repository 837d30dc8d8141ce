"""Packaging promises: the public surface, and a loud ImportError without the compiled core."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore


def test_public_api_is_explicit():
    for name in meshcore.__all__:
        assert hasattr(meshcore, name), name


def test_core_modules_are_compiled():
    from meshcore._core import buffers, frames, h2conn, hpack, huffman
    from meshcore.aio import datapath
    for mod in (buffers, frames, h2conn, hpack, huffman, datapath):
        assert Path(mod.__file__).suffix in (".so", ".pyd"), mod.__file__


@pytest.mark.parametrize("missing", ["*.so", "datapath.*.so"])
def test_missing_compiled_core_is_a_loud_import_error(tmp_path, missing):
    """A copy of the Python package without the extensions (all, or only the asyncio
    shell's data path) must refuse to import, saying how to build, rather than fall
    back to anything slower."""
    src = Path(meshcore.__file__).parent
    shutil.copytree(src, tmp_path / "meshcore",
                    ignore=shutil.ignore_patterns(missing, "*.pyd", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import meshcore"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "compiled core is not built" in proc.stderr and "pip install ." in proc.stderr
