"""Sources of mesh configuration: each writes its own resources into the mesh store
(meshcore.state). Files today; istiod's xDS joins them the same way."""
