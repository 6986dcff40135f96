"""clipper_admin 0.4.1's metrics.config: the constants a model may read."""
from clipper.container.metrics import DEFAULT_BUCKETS
from clipper_admin.version import __version__ as API_VERSION

__all__ = ["DEFAULT_BUCKETS", "API_VERSION"]
