"""clipper_admin 0.4.1's Kubernetes backend, by name only: no Kubernetes backend ships.

Scripts that import it keep importing; constructing it says what to use instead. No
Kubernetes control plane can run where this project is tested, and a backend tested only
against mocks would not be one we can stand behind.
"""
from clipper_admin.exceptions import ClipperException


class KubernetesContainerManager:
    # Not a ContainerManager subclass: an abstract class could not reach __init__ to explain.
    def __init__(self, cluster_name="default-cluster", kubernetes_proxy_addr=None, redis_ip=None,
                 redis_port=6379, useInternalIP=False, namespace="default", service_types=None,
                 create_namespace_if_not_exists=False):
        """0.4.1's signature; always raises ClipperException."""
        raise ClipperException(
            "No Kubernetes backend ships with this Clipper. To run a cluster across machines, use "
            "the Ray backend, clipper_admin.RayContainerManager (on Kubernetes: Ray through "
            "KubeRay); on one machine, DockerContainerManager or LocalContainerManager.")
