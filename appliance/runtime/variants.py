"""The optional files a model bundle may carry besides ``model.onnx``, by convention.

- ``model.fp16.onnx``: the FP16 variant (FP32 inputs / outputs), for TensorRT 11's strongly
  typed engines and ONNX Runtime CUDA (`exporters.fp16`).
- ``model.pt``: the torch weights and architecture, for the torch-CUDA backend
  (`appliance.runtime.torch_backend`); without it that backend is not available.
- ``engines/*.plan``: TensorRT engines built before shipping, named by
  `exporters.tensorrt.engine_filename` (GPU, compute capability, TensorRT version, precision).

Every one of them is listed with its sha256 in the manifest's ``files`` like any other file,
so the bundle's checksums (and signature) cover them. `fame-node export onnx` and
`fame-node export engines` add them (`exporters.variants`). What the backends get are the
verified bytes `load_bundle` read and hashed (`Bundle.data`), never the file reopened.
"""

from __future__ import annotations

from appliance.bundle import Bundle

FP16_FILE = "model.fp16.onnx"
TORCH_FILE = "model.pt"
ENGINES_DIR = "engines"
TORCH_FORMAT = "fame-node-torch/1"


def bundle_file(bundle: Bundle, rel: str) -> bytes | None:
    """The verified bytes of `rel` if the manifest lists it, else None.

    Raises `BundleError` for a bundle read without verification."""
    return bundle.data(rel) if bundle.has(rel) else None


def fp16_model(bundle: Bundle) -> bytes | None:
    return bundle_file(bundle, FP16_FILE)


def torch_weights(bundle: Bundle) -> bytes | None:
    return bundle_file(bundle, TORCH_FILE)


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
