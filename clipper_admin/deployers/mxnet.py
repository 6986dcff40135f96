"""clipper_admin 0.4.1's ``deployers.mxnet``, kept so that code importing it gets a clear
answer: Apache MXNet is retired (moved to the Apache Attic in 2023) and has no wheels for
the Pythons this project supports, so its models cannot be served as MXNet models. Export
them to ONNX and deploy them with ``clipper_admin.deployers.onnx.deploy_onnx_model``.
"""
from clipper_admin.exceptions import ClipperException

MXNET_MODEL_RELATIVE_PATH = "mxnet_model"
RETIRED = ("Apache MXNet is retired (moved to the Apache Attic in 2023) and has no wheels for "
           "current Pythons, so MXNet models cannot be deployed. Export the model to ONNX "
           "(mxnet.onnx.export_model, in an environment that still has MXNet) and deploy the "
           ".onnx file with clipper_admin.deployers.onnx.deploy_onnx_model.")


def create_endpoint(clipper_conn, name, input_type, func, mxnet_model, mxnet_data_shapes,
                    default_output="None", version=1, slo_micros=3000000, labels=None,
                    registry=None, base_image="default", num_replicas=1, batch_size=-1,
                    pkgs_to_install=None, num_gpus=0):
    raise ClipperException(RETIRED)


def deploy_mxnet_model(clipper_conn, name, version, input_type, func, mxnet_model,
                       mxnet_data_shapes, base_image="default", labels=None, registry=None,
                       num_replicas=1, batch_size=-1, pkgs_to_install=None, num_gpus=0):
    raise ClipperException(RETIRED)
