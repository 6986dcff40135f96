from clipper_admin.local.local_container_manager import LocalContainerManager, stop_all_local_clusters

__all__ = ["LocalContainerManager", "stop_all_local_clusters"]
