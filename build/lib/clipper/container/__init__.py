"""Model container runtime: serves a pickled Python function over Clipper's RPC."""
