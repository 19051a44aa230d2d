"""A tiny bundle (with and without torch weights) shared by the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import Bundle, load_bundle
from tests.exporters.tinybundle import make_tiny_bundle, tiny_net


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle"))


@pytest.fixture(scope="session")
def tiny_bundle_with_weights(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The tiny bundle plus ``model.pt`` and ``model.fp16.onnx``."""
    from exporters.variants import add_fp16, add_torch_weights

    path = make_tiny_bundle(tmp_path_factory.mktemp("tinyw") / "bundle")
    add_torch_weights(path, tiny_net())
    add_fp16(path)
    return load_bundle(Path(path))
