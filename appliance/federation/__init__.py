"""The node side of the federation (issue 9): what a hospital node does to take part.

Modules, one owner each::

    config       the ``federation`` section of the node's config (`FederationConfig`)
    privacy      `PrivacyAccountant`: epsilon of a history of DP-SGD rounds (Opacus RDP)
    ledger       `PrivacyLedger`: the rounds this node trained in, in its SQLite store,
                 and the budget check made before each round
    heldout      the fixed assignment of cases to the held-out set, kept in the store
    local_data   `load_local_data`: the reviewed cases (and configured manifests) as
                 preprocessed train / held-out arrays, each read from verified bytes
    supervisor   `SupernodeSupervisor`: the Flower SuperNode run beside `fame-node run`
    report       what `fame-node status` shows of the federation

Errors::

    FederationError (FameNodeError)   the federation cannot do what was asked
    └── LedgerError                   the privacy ledger refuses a record (bad values)

Importing this package imports neither torch nor Flower: the service loads them only
where a module needs them.
"""

from __future__ import annotations

from appliance.errors import FameNodeError


class FederationError(FameNodeError):
    """The node's federation side cannot do what was asked."""


class LedgerError(FederationError, ValueError):
    """A value given to the privacy ledger is out of range (what, and what is expected)."""


__all__ = ["FederationError", "LedgerError"]
