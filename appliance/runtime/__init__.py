"""Inference backends behind one interface; `create_backend` picks what really runs."""

from appliance.runtime.base import InferenceBackend, ModelOutputs
from appliance.runtime.factory import create_backend

__all__ = ["InferenceBackend", "ModelOutputs", "create_backend"]
