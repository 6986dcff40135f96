"""clipper_admin 0.4.1's module-level names that Clipper-era scripts import, and the ports a
cluster takes by default (no engine or cluster needed)."""
import pytest

import clipper_admin
from clipper_admin import ClipperException, DockerContainerManager, LocalContainerManager


def test_clipper_temp_dir_is_0_4_1s():
    from clipper_admin.clipper_admin import CLIPPER_TEMP_DIR
    assert clipper_admin.CLIPPER_TEMP_DIR == CLIPPER_TEMP_DIR == "/tmp/clipper"


def test_kubernetes_container_manager_imports_and_explains_what_to_use_instead():
    from clipper_admin.kubernetes.kubernetes_container_manager import KubernetesContainerManager
    assert clipper_admin.KubernetesContainerManager is KubernetesContainerManager
    with pytest.raises(ClipperException, match="No Kubernetes backend ships with this Clipper. To run a cluster "
                                               "across machines, use the Ray backend, clipper_admin.RayContainerManager"):
        KubernetesContainerManager(cluster_name="k8s", kubernetes_proxy_addr="127.0.0.1:8080", useInternalIP=True)


@pytest.mark.parametrize("manager", [LocalContainerManager, DockerContainerManager])
def test_every_port_a_cluster_takes_follows_its_own_parameters(manager):
    """Clusters given other query ports never share a metrics port (1390 for Clipper's 1337)."""
    assert manager().clipper_metric_port == 1390
    assert manager(clipper_query_port=2337).clipper_metric_port == 2390
    assert manager(clipper_query_port=2337, clipper_metric_port=9999).clipper_metric_port == 9999
