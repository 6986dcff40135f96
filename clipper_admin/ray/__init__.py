"""The Ray backend (optional: pip install -r requirements-ray.txt, Python 3.10+)."""
from clipper_admin.ray.ray_container_manager import RayContainerManager, connect_ray, stop_all_ray_clusters

__all__ = ["RayContainerManager", "connect_ray", "stop_all_ray_clusters"]
