"""Deploy a function with a PySpark model, as clipper_admin 0.4.1's ``deployers.pyspark``.

For PySpark 4 (Java 17 or newer): the model is saved with its own ``save`` (``pyspark.ml``
models and pipelines, or ``pyspark.mllib`` models with the SparkContext), each replica
starts a local SparkSession on loopback (no UI), loads the model with its class's
``load`` and calls ``func(spark, model, inputs)`` per batch, as 0.4.1 did.
"""
import logging
import os

from clipper.container.frameworks import PYSPARK_MODEL_DIR
from clipper_admin.deployers.deployer_utils import (
    deploy_model_directory, import_framework, pinned_requirements)
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

# What a Docker model image installs to run Spark.
JAVA_PACKAGES = ["default-jre-headless"]


def create_endpoint(clipper_conn, name, input_type, func, pyspark_model, sc,
                    default_output="None", version=1, slo_micros=3000000, labels=None,
                    registry=None, base_image="default", num_replicas=1, batch_size=-1,
                    pkgs_to_install=None, num_gpus=0):
    """Register an application ``name``, deploy the model as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_pyspark_model(clipper_conn, name, version, input_type, func, pyspark_model, sc,
                         base_image, labels, registry, num_replicas, batch_size, pkgs_to_install,
                         num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_pyspark_model(clipper_conn, name, version, input_type, func, pyspark_model, sc,
                         base_image="default", labels=None, registry=None, num_replicas=1,
                         batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Deploy ``func(spark, model, inputs)`` with a fitted PySpark model; ``sc`` is the
    SparkContext (``pyspark.mllib`` models save through it)."""
    pyspark = import_framework("pyspark", "pyspark", "deploy_pyspark_model")
    import pyspark.ml
    model_type = type(pyspark_model)
    if not model_type.__module__.startswith("pyspark.") or not hasattr(pyspark_model, "save"):
        raise ClipperException("pyspark_model argument was not a pyspark object")

    def save_model(directory):
        target = os.path.join(directory, PYSPARK_MODEL_DIR)
        if isinstance(pyspark_model, (pyspark.ml.PipelineModel, pyspark.ml.Model)):
            pyspark_model.save(target)
        else:
            pyspark_model.save(sc, target)
        return {"model_class": f"{model_type.__module__}.{model_type.__name__}",
                "packages": pinned_requirements("pyspark"), "apt_packages": JAVA_PACKAGES}

    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="pyspark", save_model=save_model)
    logger.info("PySpark model deployed")
