"""The optional files a model bundle may carry besides ``model.onnx``, by convention.

- ``model.fp16.onnx``: the FP16 variant (FP32 inputs / outputs), for TensorRT 11's strongly
  typed engines and ONNX Runtime CUDA (`exporters.fp16`).
- ``model.pt``: the torch weights and architecture, for the torch-CUDA backend
  (`appliance.runtime.torch_backend`); without it that backend is not available.
- ``engines/*.plan``: TensorRT engines built before shipping, named by
  `exporters.tensorrt.engine_filename` (GPU, compute capability, TensorRT version, precision).

Every one of them is listed with its sha256 in the manifest's ``files`` like any other file,
so the bundle's checksums (and signature) cover them. `fame-node export onnx` and
`fame-node export engines` add them (`exporters.variants`).
"""

from __future__ import annotations

from pathlib import Path

from appliance.bundle import Bundle

FP16_FILE = "model.fp16.onnx"
TORCH_FILE = "model.pt"
ENGINES_DIR = "engines"
TORCH_FORMAT = "fame-node-torch/1"


def bundle_file(bundle: Bundle, rel: str) -> Path | None:
    """`rel` inside the bundle if the manifest lists it (so it was verified), else None."""
    if rel not in bundle.manifest.files:
        return None
    path = bundle.path / rel
    return path if path.is_file() else None


def fp16_model(bundle: Bundle) -> Path | None:
    return bundle_file(bundle, FP16_FILE)


def torch_weights(bundle: Bundle) -> Path | None:
    return bundle_file(bundle, TORCH_FILE)


def shipped_engines_dir(bundle: Bundle) -> Path:
    return bundle.path / ENGINES_DIR


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
