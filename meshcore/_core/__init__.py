"""meshcore's compiled core (built from src/meshcore/_core/*.pyx).

There is no pure-Python fallback: if the extensions are missing, importing
meshcore fails here with instructions instead of silently running slowly.
"""


def _installed_elsewhere() -> str | None:
    """Where another meshcore lives on the import path, if this import found a different
    copy: a source checkout's meshcore/ folder shadows the installed package for any
    program started in the checkout (Python puts the current directory first)."""
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent.parent
    for entry in sys.path:
        candidate = Path(entry or ".").resolve() / "meshcore"
        if candidate != here and (candidate / "__init__.py").is_file():
            return str(candidate)
    return None


def not_built(exc: ImportError) -> ImportError:
    """The error for a missing extension (here, or meshcore.aio.datapath's)."""
    from pathlib import Path
    here = Path(__file__).resolve().parent.parent
    elsewhere = _installed_elsewhere()
    if elsewhere is not None and (here.parent / "setup.py").exists():
        return ImportError(
            f"meshcore was imported from the source tree at {here}, which has no compiled core, "
            f"instead of the installed build at {elsewhere}: the checkout's meshcore/ folder shadows "
            "it for programs started in the checkout. Run from another directory, or work in the "
            "checkout with an editable install (`pip install -e .`, which builds the core in place). "
            f"({exc})")
    return ImportError(
        "meshcore's compiled core is not built "
        f"({exc}). Install the package with `pip install .` (needs gcc and the Python "
        "headers; Cython comes from the build requirements), or for a source checkout "
        "run `pip install -e .` or `python setup.py build_ext --inplace`.")


try:
    from meshcore._core import buffers, events, frames, h2conn, headers, hpack, huffman, policy, pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise not_built(exc) from exc
