"""Every framework deployer keeps clipper_admin 0.4.1's parameters (names, order, defaults),
so 0.4.1 code calls it unchanged, positionally or by keyword; ``num_gpus`` (ours) comes last.
The modules import without their frameworks."""
import importlib
import inspect

import pytest

# 0.4.1's tail of every deploy_* call, after the model arguments.
DEPLOY_TAIL = [("base_image", "default"), ("labels", None), ("registry", None),
               ("num_replicas", 1), ("batch_size", -1), ("pkgs_to_install", None)]
ENDPOINT_TAIL = [("default_output", "None"), ("version", 1), ("slo_micros", 3000000),
                 ("labels", None), ("registry", None), ("base_image", "default"),
                 ("num_replicas", 1), ("batch_size", -1), ("pkgs_to_install", None)]
REQUIRED = inspect.Parameter.empty

SIGNATURES = {
    ("pytorch", "deploy_pytorch_model"): ["clipper_conn", "name", "version", "input_type", "func",
                                          "pytorch_model", *DEPLOY_TAIL],
    ("pytorch", "create_endpoint"): ["clipper_conn", "name", "input_type", "func", "pytorch_model",
                                     *ENDPOINT_TAIL],
    ("tensorflow", "deploy_tensorflow_model"): ["clipper_conn", "name", "version", "input_type", "func",
                                                "tf_sess_or_saved_model_path", *DEPLOY_TAIL],
    ("tensorflow", "create_endpoint"): ["clipper_conn", "name", "input_type", "func",
                                        "tf_sess_or_saved_model_path", *ENDPOINT_TAIL],
    ("keras", "deploy_keras_model"): ["clipper_conn", "name", "version", "input_type", "func",
                                      "model_path_or_object", *DEPLOY_TAIL],
    ("keras", "create_endpoint"): ["clipper_conn", "name", "input_type", "func", "model_path_or_object",
                                   *ENDPOINT_TAIL],
    ("pyspark", "deploy_pyspark_model"): ["clipper_conn", "name", "version", "input_type", "func",
                                          "pyspark_model", "sc", *DEPLOY_TAIL],
    ("pyspark", "create_endpoint"): ["clipper_conn", "name", "input_type", "func", "pyspark_model", "sc",
                                     *ENDPOINT_TAIL],
    ("mxnet", "deploy_mxnet_model"): ["clipper_conn", "name", "version", "input_type", "func",
                                      "mxnet_model", "mxnet_data_shapes", *DEPLOY_TAIL],
    ("mxnet", "create_endpoint"): ["clipper_conn", "name", "input_type", "func", "mxnet_model",
                                   "mxnet_data_shapes", *ENDPOINT_TAIL],
    ("onnx", "deploy_pytorch_model"): [
        "clipper_conn", "name", "version", "input_type", "inputs", "func", "pytorch_model",
        ("base_image", None), ("labels", None), ("registry", None), ("num_replicas", 1),
        ("onnx_backend", "caffe2"), ("batch_size", -1), ("pkgs_to_install", None)],
    ("onnx", "create_pytorch_endpoint"): [
        "clipper_conn", "name", "input_type", "inputs", "func", "pytorch_model",
        ("default_output", "None"), ("version", 1), ("slo_micros", 3000000), ("labels", None),
        ("registry", None), ("base_image", None), ("num_replicas", 1), ("onnx_backend", "caffe2"),
        ("batch_size", -1), ("pkgs_to_install", None)],
}


@pytest.mark.parametrize("module, function", sorted(SIGNATURES))
def test_parameters_are_0_4_1s_then_num_gpus(module, function):
    deployer = getattr(importlib.import_module(f"clipper_admin.deployers.{module}"), function)
    parameters = [(p.name, p.default) for p in inspect.signature(deployer).parameters.values()]
    expected = [(p, REQUIRED) if isinstance(p, str) else p for p in SIGNATURES[(module, function)]]
    assert parameters == expected + [("num_gpus", 0)]
