from clipper_admin.docker.docker_container_manager import DockerContainerManager, stop_all_docker_clusters

__all__ = ["DockerContainerManager", "stop_all_docker_clusters"]
