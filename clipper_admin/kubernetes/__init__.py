from clipper_admin.kubernetes.kubernetes_container_manager import KubernetesContainerManager

__all__ = ["KubernetesContainerManager"]
