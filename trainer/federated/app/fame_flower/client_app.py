"""The ClientApp: the node's own installed code (`trainer.federated.client`)."""

from trainer.federated.client import app

__all__ = ["app"]
