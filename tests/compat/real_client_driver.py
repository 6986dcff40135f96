"""Run under Python 3.6 with the real clipper_admin 0.4.1: drive our management frontend.

    python real_client_driver.py <admin addr> <query addr>

Prints one JSON object: what each call returned, or the message of the ClipperException it
raised. The containers are not the point here (nothing is started): the ContainerManager
below only tells the real ClipperConnection where our frontends are, so every call that
reaches the cluster is the real client's own REST call.
"""
import json
import sys

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.container_manager import ContainerManager


class AddressOnly(ContainerManager):
    """Points the real client at a running cluster; starts and stops nothing."""

    def __init__(self, admin_addr, query_addr):
        self.admin_addr, self.query_addr = admin_addr, query_addr
        self.cluster_identifier = "compat"      # ClipperConnection logs with it

    def start_clipper(self, *args, **kwargs):
        raise NotImplementedError("the cluster is started by the test")

    def connect(self):
        pass

    def deploy_model(self, name, version, input_type, image, num_replicas=1):
        pass

    def get_num_replicas(self, name, version):
        return 0

    def set_num_replicas(self, name, version, input_type, image, num_replicas):
        pass

    def get_logs(self, logging_dir):
        return []

    def stop_models(self, models):
        pass

    def stop_all_model_containers(self):
        pass

    def stop_all(self, graceful=True):
        pass

    def get_admin_addr(self):
        return self.admin_addr

    def get_query_addr(self):
        return self.query_addr

    def get_metric_addr(self):
        return self.query_addr


def error_of(call, *args):
    try:
        call(*args)
    except ClipperException as error:
        return str(error)
    return None


def by_name(documents, *keys):
    return sorted(documents, key=lambda document: [document[key] for key in keys])


def main(admin_addr, query_addr):
    conn = ClipperConnection(AddressOnly(admin_addr, query_addr))
    conn.connect()
    out = {}
    # What our own client registered before this script ran.
    out["ours_apps"] = conn.get_all_apps()
    out["ours_app_info"] = conn.get_app_info("ours-app")
    out["ours_model_info"] = conn.get_model_info("ours-model", "1")
    out["ours_current_version"] = conn.get_current_model_version("ours-model")

    # Applications.
    conn.register_application("real-app", "doubles", "-1.0", 100000)
    out["duplicate_app"] = error_of(conn.register_application, "real-app", "doubles", "-1.0", 100000)

    # Models: containerless, then with an image (which becomes the current version).
    conn.register_model("real-model", "1", "doubles", labels=["first"])
    conn.register_model("real-model", "2", "doubles", image="example/real-model:2", batch_size=8)
    out["duplicate_model"] = error_of(conn.register_model, "real-model", "2", "doubles")

    # Links.
    out["link_unknown"] = error_of(conn.link_model_to_app, "real-app", "no-such-model")
    out["link_wrong_type"] = error_of(conn.link_model_to_app, "real-app", "ours-model")
    conn.link_model_to_app("real-app", "real-model")

    # Listings.
    out["apps"] = sorted(conn.get_all_apps())
    out["apps_verbose"] = by_name(conn.get_all_apps(verbose=True), "name")
    out["app_info"] = conn.get_app_info("real-app")
    out["missing_app_info"] = conn.get_app_info("no-such-app")
    out["linked"] = conn.get_linked_models("real-app")
    out["models"] = sorted(conn.get_all_models())
    out["models_verbose"] = by_name(conn.get_all_models(verbose=True), "model_name", "model_version")
    out["model_info"] = conn.get_model_info("real-model", "2")
    out["missing_model_info"] = conn.get_model_info("real-model", "9")
    out["replicas"] = conn.get_all_model_replicas()
    out["replicas_verbose"] = conn.get_all_model_replicas(verbose=True)
    out["missing_replica_info"] = conn.get_model_replica_info("real-model", "2", 0)
    out["metrics"] = conn.inspect_instance()

    # Versions: roll back, refuse an unknown one, deploy a third (deploy_model registers it).
    out["current_version"] = conn.get_current_model_version("real-model")
    conn.set_model_version("real-model", "1")
    out["current_after_rollback"] = conn.get_current_model_version("real-model")
    out["unknown_version"] = error_of(conn.set_model_version, "real-model", "9")
    # The client decides this one from our container_name ("NO_CONTAINER").
    out["resize_containerless"] = error_of(conn.set_num_replicas, "real-model", 2, "1")
    conn.deploy_model("real-model", "3", "doubles", "example/real-model:3")
    out["current_after_deploy"] = conn.get_current_model_version("real-model")
    conn.stop_inactive_model_versions(["real-model"])   # unregisters versions 1 and 2
    out["models_after_stop_inactive"] = sorted(conn.get_all_models())
    out["stop_unknown_version"] = error_of(conn.stop_versioned_models, {"real-model": ["9"]})

    # Unlinking and unregistering.
    conn.unlink_model_from_app("real-app", "real-model")
    out["linked_after_unlink"] = conn.get_linked_models("real-app")
    out["unlink_again"] = error_of(conn.unlink_model_from_app, "real-app", "real-model")
    conn.register_application("doomed-app", "strings", "none", 50000)
    conn.register_application("deprecated-app", "bytes", "none", 50000)
    conn.unregister_application("doomed-app")
    conn.delete_application("deprecated-app")
    out["apps_after_unregister"] = sorted(conn.get_all_apps())
    out["unregister_missing"] = error_of(conn.unregister_application, "doomed-app")

    # Left for our client to read after this script.
    conn.link_model_to_app("real-app", "real-model")
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
