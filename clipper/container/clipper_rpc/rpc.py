"""``import rpc`` for model containers written for Clipper's images: this directory on
PYTHONPATH (clipper.container.rpc.RPC_IMPORT_DIR), or /container in the Docker backend's
runtime image."""
from clipper.container.rpc import *  # noqa: F401,F403  (its __all__: Clipper's names)
