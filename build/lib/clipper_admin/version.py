import os

__version__ = "0.4.1"
# Image prefix of Clipper's own images (the Docker backend builds its own instead).
__registry__ = os.environ.get("CLIPPER_REGISTRY", "clipper")
