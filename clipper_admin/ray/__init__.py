"""The Ray backend (optional: pip install -r requirements-ray.txt, Python 3.10+)."""
from clipper_admin.ray.ray_container_manager import RayContainerManager, stop_all_ray_clusters

__all__ = ["RayContainerManager", "stop_all_ray_clusters"]
