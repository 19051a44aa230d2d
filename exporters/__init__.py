"""Exporters: torch -> ONNX with a parity check, and the model bundle writer.

Submodules import torch (``onnx_export``) or only the bundle contract (``bundle``); this
package itself imports neither.
"""
