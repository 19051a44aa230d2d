"""Exporters: torch -> ONNX with a parity check, the model bundle writer, and what is
derived from a bundle's ONNX for faster or larger-scale inference.

- ``onnx_export``: torch -> ONNX (dynamic batch, ``onnx.checker``, parity vs eager); torch.
- ``bundle``: writing a bundle (manifest, checksums).
- ``fp16``: the FP16 ONNX variant with FP32 inputs / outputs; onnx only.
- ``tensorrt``: TensorRT engines, their cache key and build (TensorRT 10 and 11); imports
  tensorrt lazily.
- ``fame_bundle``: a `FameNodeNet` as a complete bundle (OOD head, temperature, ONNX,
  ``weights.safetensors``, ``heads.safetensors``); torch.
- ``variants``: adding the FP16 ONNX and engines to an existing bundle.
- ``triton``: a Triton Inference Server model repository from a bundle.

Errors: ``onnx_export.ExportError`` (``ParityError``), ``fp16.Fp16Error``
(``Fp16ConversionError``, ``Fp16ToleranceError``), ``tensorrt.EngineBuildError`` and
``triton.TritonExportError``; bundle problems are `appliance.errors.BundleError`. Only
``onnx_export`` and ``fame_bundle`` need torch; this package itself imports
nothing heavy.
"""
