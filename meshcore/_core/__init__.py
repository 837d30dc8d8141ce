"""meshcore's compiled core (built from src/meshcore/_core/*.pyx).

There is no pure-Python fallback: if the extensions are missing, importing
meshcore fails here with instructions instead of silently running slowly.
"""


def not_built(exc: ImportError) -> ImportError:
    """The error for a missing extension (here, or meshcore.aio.datapath's). A checkout
    shadowing an installed build never gets here: meshcore/__init__.py switches to the
    installed build, or names both when their versions differ."""
    return ImportError(
        "meshcore's compiled core is not built "
        f"({exc}). Install the package with `pip install .` (needs gcc and the Python "
        "headers; Cython comes from the build requirements), or for a source checkout "
        "run `pip install -e .` or `python setup.py build_ext --inplace`.")


try:
    from meshcore._core import buffers, events, frames, h2conn, headers, hpack, huffman, policy, pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise not_built(exc) from exc
