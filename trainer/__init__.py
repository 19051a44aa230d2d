"""FAME Node training: models, datasets, losses, metrics and training loops.

Importing this package must stay cheap and must not import torch: the appliance imports
light modules such as ``trainer.metrics`` on machines without the training extra installed.
The torch-based parts live in submodules (``trainer.models``, ``trainer.data``,
``trainer.losses``, ``trainer.train``) and are imported explicitly where needed.
"""
