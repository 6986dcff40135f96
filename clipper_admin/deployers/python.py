"""Deploy a Python function (closure) as a Clipper model, as clipper_admin 0.4.1 does."""
import logging

from clipper_admin.deployers.deployer_utils import deploy_model_directory

logger = logging.getLogger(__name__)


def create_endpoint(clipper_conn, name, input_type, func, default_output="None", version=1,
                    slo_micros=3000000, labels=None, registry=None, base_image="default",
                    num_replicas=1, batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Register an application ``name``, deploy ``func`` as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_python_closure(clipper_conn, name, version, input_type, func, base_image, labels,
                          registry, num_replicas, batch_size, pkgs_to_install, num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_python_closure(clipper_conn, name, version, input_type, func, base_image="default",
                          labels=None, registry=None, num_replicas=1, batch_size=-1,
                          pkgs_to_install=None, num_gpus=0):
    """Pickle ``func`` and deploy it. It is called once per batch with a numpy array of inputs
    and must return one output per input (each is str()-ed). ``num_gpus`` (ours): GPUs for
    each replica (CUDA_VISIBLE_DEVICES)."""
    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus)
    logger.info("Python closure deployed")
