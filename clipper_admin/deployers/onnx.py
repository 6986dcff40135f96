"""Deploy a function with an ONNX model, as clipper_admin 0.4.1's ``deployers.onnx``.

0.4.1 exported a PyTorch model to ONNX and served it with Caffe2, which is gone: models
are served with onnxruntime (``onnx_backend="caffe2"`` means onnxruntime). The function is
called as ``func(model, inputs)`` per batch, where ``model.run(inputs)`` returns the list
of outputs as Caffe2's backend did (``model.session`` is the onnxruntime session). The
batch dimension (the first) of every input and output is exported as dynamic, so any
batch size runs; a model that fixes it is exported with the example's shapes, as 0.4.1
exported every model, and batches hold at most the example's inputs (unless batch_size
says otherwise). ``deploy_onnx_model`` (ours) deploys an existing ``.onnx`` file.
"""
import logging
import os
import shutil
import tempfile

from clipper.container.frameworks import ONNX_MODEL_FILE
from clipper_admin.container_manager import package_list
from clipper_admin.deployers.deployer_utils import (
    deploy_model_directory, import_framework, pinned_requirements)
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

SERVING_BACKEND = "onnxruntime"
# Backends 0.4.1 named, all served by onnxruntime here.
ONNX_BACKENDS = ("caffe2", "onnxruntime")


def create_pytorch_endpoint(clipper_conn, name, input_type, inputs, func, pytorch_model,
                            default_output="None", version=1, slo_micros=3000000, labels=None,
                            registry=None, base_image=None, num_replicas=1, onnx_backend="caffe2",
                            batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Register an application ``name``, deploy the model as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_pytorch_model(clipper_conn, name, version, input_type, inputs, func, pytorch_model,
                         base_image, labels, registry, num_replicas, onnx_backend, batch_size,
                         pkgs_to_install, num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_pytorch_model(clipper_conn, name, version, input_type, inputs, func, pytorch_model,
                         base_image=None, labels=None, registry=None, num_replicas=1,
                         onnx_backend="caffe2", batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Export ``pytorch_model`` to ONNX, tracing it on ``inputs`` (a tensor or a tuple of
    tensors, one example batch), and deploy ``func(model, inputs)`` with it."""
    _check_backend(onnx_backend)
    pkgs_to_install = package_list(pkgs_to_install)      # refused before the export, not after
    torch = import_framework("torch", "pytorch", "deploy_pytorch_model")
    _import_runtime()
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    exported = tempfile.mkdtemp(prefix="clipper-onnx-")
    try:
        try:
            fixed_shapes = _export(torch, pytorch_model, args, os.path.join(exported, ONNX_MODEL_FILE))
        except Exception as error:
            raise ClipperException(f"Could not save the onnx model: {type(error).__name__}: {error}") from error
        if fixed_shapes and batch_size in (None, -1):
            # Each call takes what the example held: batches of that size at most.
            batch_size = _examples_in(args[0])
            logger.warning("The model exports only with the example's shapes: its batches hold at "
                           "most %d input(s)", batch_size)

        def save_model(directory):
            for entry in os.listdir(exported):      # the model, and any external data beside it
                shutil.copy(os.path.join(exported, entry), directory)
            return {"packages": pinned_requirements("onnxruntime")}

        _deploy(clipper_conn, name, version, input_type, func, base_image, labels, registry,
                num_replicas, batch_size, pkgs_to_install, num_gpus, save_model)
    finally:
        shutil.rmtree(exported, ignore_errors=True)


def _export(torch, pytorch_model, args, target) -> bool:
    """Export with a dynamic first dimension, or, for a model that fixes it (0.4.1's test
    traced a (784,) example and reshaped it to (1, 1, 28, 28)), with the example's shapes,
    as 0.4.1 exported every model. Whether the shapes are the example's."""
    with torch.no_grad():
        outputs = pytorch_model(*args)
    output_count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names = dict(input_names=[f"input_{i}" for i in range(len(args))],
                 output_names=[f"output_{i}" for i in range(output_count)])
    dynamic = {n: {0: "batch"} for n in names["input_names"] + names["output_names"]}
    try:
        torch.onnx.export(pytorch_model, args, target, dynamic_axes=dynamic, **names)
        fixed_shapes = False
    except torch.onnx.OnnxExporterError as error:
        logger.info("No dynamic batch dimension (%s); exporting with the example's shapes",
                    str(error).splitlines()[0][:300])
        torch.onnx.export(pytorch_model, args, target, **names)
        fixed_shapes = True
    logger.info("Torch model has been serialized to ONNX format")
    return fixed_shapes


def _examples_in(example):
    """How many inputs an example tensor holds: its first dimension, or 1 for one vector."""
    return int(example.shape[0]) if example.dim() >= 2 else 1


def deploy_onnx_model(clipper_conn, name, version, input_type, func, onnx_model,
                      base_image="default", labels=None, registry=None, num_replicas=1,
                      batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Deploy ``func(model, inputs)`` with an ONNX model: a path to a ``.onnx`` file (from
    any framework's exporter) or an ``onnx.ModelProto``."""
    onnx = import_framework("onnx", "onnx", "deploy_onnx_model")
    _import_runtime()
    if not isinstance(onnx_model, onnx.ModelProto) and not os.path.isfile(str(onnx_model)):
        raise ClipperException(f"onnx_model must be a path to an .onnx file or an onnx.ModelProto; "
                               f"{onnx_model!r} is neither")

    def save_model(directory):
        model = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
        onnx.checker.check_model(model)
        onnx.save_model(model, os.path.join(directory, ONNX_MODEL_FILE))   # external data inlined
        return {"packages": pinned_requirements("onnxruntime")}

    _deploy(clipper_conn, name, version, input_type, func, base_image, labels, registry,
            num_replicas, batch_size, pkgs_to_install, num_gpus, save_model)


def _check_backend(onnx_backend):
    if onnx_backend not in ONNX_BACKENDS:
        raise ClipperException(f"The ONNX backend {onnx_backend!r} is not supported; models are "
                               f"served with {SERVING_BACKEND} (onnx_backend='caffe2' or 'onnxruntime')")
    if onnx_backend == "caffe2":
        logger.info("Caffe2 is retired: the ONNX model is served with onnxruntime")


def _import_runtime():
    import_framework("onnxruntime", "onnx", "The ONNX deployer")


def _deploy(clipper_conn, name, version, input_type, func, base_image, labels, registry,
            num_replicas, batch_size, pkgs_to_install, num_gpus, save_model):
    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image or "default",
                           labels, registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="onnx", save_model=save_model)
    logger.info("ONNX model deployed")
