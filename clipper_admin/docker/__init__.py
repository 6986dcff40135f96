from clipper_admin.docker.docker_container_manager import DockerContainerManager

__all__ = ["DockerContainerManager"]
