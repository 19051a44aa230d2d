"""FAME Node's Flower app bundle: shims over the installed `trainer.federated`."""
