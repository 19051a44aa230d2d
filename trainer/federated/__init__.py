"""The Flower apps of the federation (issue 9): what runs in a ClientApp and a ServerApp.

Modules, one owner each::

    wire        the model on the wire: a `FameNodeNet`'s state as an ordered list of
                arrays, their digest, update deltas, the shape check of a received model
    signing     the coordinator's Ed25519 signature over a global model's digest, and
                the node's check of it against the keys it trusts
    settings    `RunSettings`: the run config (``[tool.flwr.app.config]``), parsed once,
                every bad value named with what is expected
    local_train one node's local fine-tuning: DP-SGD with Opacus (per-example clipping,
                Gaussian noise, Poisson sampling) or plain SGD, FedProx's proximal step
    evaluate    Dice and AUC of a model on a node's held-out arrays
    guard       the mod that checks every reply a node sends: model arrays and named
                numeric metrics only (no string, no identifier, no pixel)
    node        the node-side parts a ClientApp uses (config, active bundle, local data,
                privacy ledger), behind one small interface
    client      the ClientApp's train handler
    strategy    the ServerApp's strategy: FedAvg / FedProx over weight deltas, signing
                each global model it sends
    server      the ServerApp's main: the legacy workflow (plain or SecAgg+)
    experiments the experiments of docs/FEDERATION.md (local-only / federated /
                centralised, DP, SecAgg+), in process over `train_local` and the
                strategy; helpers ``experiment_sites``, ``experiment_metrics``,
                ``experiment_secagg``, ``experiment_doc``
    app/        the Flower app bundle (``pyproject.toml`` + a two-line shim per app) that
                ``flwr run`` ships; it holds no model and no logic

Errors::

    FederatedError (ValueError)      the app cannot do what was asked
    ├── RunConfigError               a run config value is missing or out of range
    └── GlobalModelError             a received global model is refused (signature, shapes)

Nothing here imports Flower at import time except `client`, `server`, `strategy` and
`guard`, which are only loaded inside Flower's processes, and the experiments
(`experiments`, `experiment_secagg`), which are run on their own.
"""

from __future__ import annotations


class FederatedError(ValueError):
    """The federated app cannot do what was asked."""


class RunConfigError(FederatedError):
    """A run config value is missing, of the wrong type or out of range."""


class GlobalModelError(FederatedError):
    """A received global model is refused: its signature, digest or shapes."""


__all__ = ["FederatedError", "GlobalModelError", "RunConfigError"]
