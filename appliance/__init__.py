"""FAME Node appliance: the node service (config, ingest, readers, preprocessing, runtime,
pipeline, results, CLI). Nothing here imports Qt or torch."""

__version__ = "0.1.0"
