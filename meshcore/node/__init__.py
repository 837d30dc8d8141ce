"""The node proxy: one process per node giving every local workload an mTLS identity,
HBONE tunnels and L4 authorization (`meshcore node`)."""

__all__ = ["NodeOptions", "NodeProxy"]


def __getattr__(name: str):
    # the CLI imports meshcore.node.cli for its options without loading the whole proxy
    if name in __all__:
        from meshcore.node import proxy
        return getattr(proxy, name)
    raise AttributeError(name)
