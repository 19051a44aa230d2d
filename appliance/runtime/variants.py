"""The files a model bundle may carry besides ``model.onnx``, by convention.

- ``model.fp16.onnx``: the FP16 variant (FP32 inputs / outputs), for TensorRT 11's strongly
  typed engines and ONNX Runtime CUDA (`exporters.fp16`).
- ``weights.safetensors``: the network's torch weights, its architecture in the file's
  metadata and in the manifest (`trainer.weights`); the federation fine-tunes them.
- ``heads.safetensors``: the tensors the exported graph holds besides the network: the
  out-of-distribution head and the calibration temperature (`trainer.graph`). With the
  weights, they are what the torch-CUDA backend (`appliance.runtime.torch_backend`) rebuilds
  the graph of ``model.onnx`` from; a bundle without both cannot run on that backend.
  Every FAME bundle export writes both (`exporters.fame_bundle`).
- ``engines/*.plan``: TensorRT engines built before shipping, named by
  `exporters.tensorrt.engine_filename` (GPU, compute capability, TensorRT version, precision).

Every one of them is listed with its sha256 in the manifest's ``files`` like any other file,
so the bundle's checksums (and signature) cover them. `fame-node export onnx` and
`fame-node export engines` add the FP16 ONNX and the engines (`exporters.variants`). What
the backends get are the verified bytes `load_bundle` read and hashed (`Bundle.data`), never
the file reopened. safetensors only: no file of a bundle is ever unpickled.

This module needs neither torch nor the trainer: the node checks what a bundle carries
before it imports either.
"""

from __future__ import annotations

from appliance.bundle import Bundle

FP16_FILE = "model.fp16.onnx"
WEIGHTS_FILE = "weights.safetensors"
HEADS_FILE = "heads.safetensors"
ENGINES_DIR = "engines"
# What the torch backend needs to rebuild the graph of model.onnx, in the order it reads them.
TORCH_GRAPH_FILES = (WEIGHTS_FILE, HEADS_FILE)


def bundle_file(bundle: Bundle, rel: str) -> bytes | None:
    """The verified bytes of `rel` if the manifest lists it, else None.

    Raises `BundleError` for a bundle read without verification."""
    return bundle.data(rel) if bundle.has(rel) else None


def fp16_model(bundle: Bundle) -> bytes | None:
    return bundle_file(bundle, FP16_FILE)


def missing_torch_files(bundle: Bundle) -> list[str]:
    """The files of `TORCH_GRAPH_FILES` the bundle's manifest does not list (none: the torch
    backend can rebuild its graph)."""
    return [rel for rel in TORCH_GRAPH_FILES if not bundle.has(rel)]


def engine_file(name: str) -> str:
    """The bundle-relative name of a shipped engine."""
    return f"{ENGINES_DIR}/{name}"


def batch_dims(bundle: Bundle) -> tuple[str, tuple[int, ...]]:
    """The input's name and its shape without the batch axis, from the manifest."""
    spec = bundle.manifest.inputs[0]
    dims = tuple(int(d) for d in spec.shape[1:] if isinstance(d, int))
    if len(dims) != len(spec.shape) - 1:
        raise ValueError(
            f"bundle {bundle.path}: input {spec.name} has shape {spec.shape}; only the batch "
            "axis may be dynamic"
        )
    return spec.name, dims
