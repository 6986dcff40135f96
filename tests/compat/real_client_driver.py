"""Run under Python 3.6 with the real clipper_admin 0.4.1: drive our management frontend.

    python real_client_driver.py <admin addr> <query addr>

Prints one JSON object: what each call returned, or the error it raised.
"""
import json
import sys

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.container_manager import ContainerManager


class AddressOnly(ContainerManager):
    """Points the real client at a running cluster; starts and stops nothing."""

    def __init__(self, admin_addr, query_addr):
        self.admin_addr, self.query_addr = admin_addr, query_addr
        self.cluster_identifier = "compat"

    def start_clipper(self, *args):
        raise NotImplementedError

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


def main(admin_addr, query_addr):
    conn = ClipperConnection(AddressOnly(admin_addr, query_addr))
    conn.connect()
    out = {"seen_apps": conn.get_all_apps()}        # what our own client registered first
    conn.register_application("real-app", "doubles", "-1.0", 100000)
    out["duplicate_app"] = error_of(conn.register_application, "real-app", "doubles", "-1.0", 100000)
    conn.register_model("real-model", "1", "doubles", labels=["first"])
    conn.register_model("real-model", "2", "doubles", image="example/real-model:2", batch_size=8)
    out["link_unknown"] = error_of(conn.link_model_to_app, "real-app", "no-such-model")
    conn.link_model_to_app("real-app", "real-model")
    out["apps"] = sorted(conn.get_all_apps())
    out["apps_verbose"] = sorted(conn.get_all_apps(verbose=True), key=lambda a: a["name"])
    out["app_info"] = conn.get_app_info("real-app")
    out["missing_app_info"] = conn.get_app_info("no-such-app")
    out["linked"] = conn.get_linked_models("real-app")
    out["models"] = sorted(conn.get_all_models())
    out["models_verbose"] = sorted(conn.get_all_models(verbose=True),
                                   key=lambda m: (m["model_name"], m["model_version"]))
    out["model_info"] = conn.get_model_info("real-model", "2")
    out["current_version"] = conn.get_current_model_version("real-model")
    conn.set_model_version("real-model", "1")
    out["current_after_rollback"] = conn.get_current_model_version("real-model")
    out["unknown_version"] = error_of(conn.set_model_version, "real-model", "9")
    out["replicas"] = conn.get_all_model_replicas()
    conn.unlink_model_from_app("real-app", "real-model")
    out["linked_after_unlink"] = conn.get_linked_models("real-app")
    conn.register_application("doomed-app", "strings", "none", 50000)
    conn.unregister_application("doomed-app")
    out["apps_after_unregister"] = sorted(conn.get_all_apps())
    conn.link_model_to_app("real-app", "real-model")   # left linked for the other side to read
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
