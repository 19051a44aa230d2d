"""A tiny bundle (with and without torch weights) shared by the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import Bundle, load_bundle
from tests.exporters.tinybundle import make_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle"))


@pytest.fixture(scope="session")
def tiny_bundle_with_weights(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A real FAME export of a tiny single MAU-Net (``weights.safetensors`` and
    ``heads.safetensors``, what the torch backend needs) plus ``model.fp16.onnx``."""
    from exporters.variants import add_fp16
    from tests.trainer.foldbundle import export_tiny, tiny_single_net

    path = export_tiny(tiny_single_net(), tmp_path_factory.mktemp("tinyw"), name="tiny")
    add_fp16(path)
    return load_bundle(Path(path))
