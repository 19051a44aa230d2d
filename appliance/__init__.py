"""FAME Node appliance: the node service (config, ingest, readers, preprocessing, runtime,
pipeline, results, CLI). Nothing here imports Qt or torch."""

import os

# No traffic leaves the hospital but what the node is configured to send: ONNX Runtime's
# built-in telemetry (it writes a device id and an event cache under ~/.cache on import)
# and Flower's usage reports are off unless a site turns them on explicitly. Set before
# anything imports onnxruntime or flwr.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

__version__ = "0.1.0"
