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
    # -S: no site-packages, so no installed build to use instead
    proc = subprocess.run([sys.executable, "-S", "-c", "import meshcore"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "compiled core is not built" in proc.stderr and "pip install ." in proc.stderr


def _checkout_and_installed(tmp_path, installed_version=None):
    src = Path(meshcore.__file__).parent
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    shutil.copytree(src, checkout / "meshcore", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (checkout / "setup.py").write_text("")
    shutil.copytree(src, site / "meshcore", ignore=shutil.ignore_patterns("__pycache__"))
    if installed_version:
        init = site / "meshcore" / "__init__.py"
        init.write_text(init.read_text().replace(f'__version__ = "{meshcore.__version__}"',
                                                 f'__version__ = "{installed_version}"'))
    return checkout, site


def test_a_program_started_in_an_unbuilt_checkout_uses_the_installed_build(tmp_path):
    """`pip install .` then a snippet run from the clone root: the checkout's meshcore/
    (no compiled core) comes first on the path, and the installed build of the same
    version is used."""
    checkout, site = _checkout_and_installed(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import meshcore._core.h2conn as m; print(m.__file__)"],
                          cwd=checkout, capture_output=True, text=True, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(site / "meshcore" / "_core"))


def test_a_checkout_shadowing_another_version_is_named(tmp_path):
    checkout, site = _checkout_and_installed(tmp_path, installed_version="0.0.1")
    proc = subprocess.run([sys.executable, "-c", "import meshcore"], cwd=checkout, capture_output=True,
                          text=True, env={"PYTHONPATH": str(site)})
    assert proc.returncode != 0
    assert f"imported from the source tree at {checkout / 'meshcore'}" in proc.stderr
    assert f"the installed build at {site / 'meshcore'} is another version" in proc.stderr
    assert "pip install -e ." in proc.stderr
