"""Clipper's model-container RPC (version 3) over ZeroMQ."""
