"""The ServerApp: the coordinator's installed code (`trainer.federated.server`)."""

from trainer.federated.server import app

__all__ = ["app"]
