"""Which of the node's cases are held out of training: assigned once, kept in the store.

A global model is judged on cases it was never trained on, here or anywhere: so every
case belongs to a *group* (its patient, where the DICOM names one: all images of a
patient fall on the same side; otherwise its job), and each group is assigned to the
held-out set or the training set the first time it is seen, in table
``federation_heldout`` (schema v5; triggers refuse UPDATE and DELETE). The assignment
never changes between rounds, runs or restarts, whatever the share in the config later
says: a case once validated on is never trained on.

New groups are assigned in the order given (oldest job first), each held out when that
keeps the held-out count at ``round(share * groups)``: the share is met as closely as the
number of groups allows, and the first held-out group comes with the third (share 0.2)
rather than by chance. Group keys are pseudonyms (`appliance.privacy.Pseudonymizer`, the
node's own key): the table holds no patient identifier.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from appliance.federation import LedgerError
from appliance.store.db import Clock, StoreBase, utc_now


class HeldoutAssignments(StoreBase):
    """The stored group -> held-out assignment; thread-safe."""

    def __init__(self, db_path: Path, *, clock: Clock = utc_now) -> None:
        super().__init__(Path(db_path), clock=clock)

    def assign(self, groups: Iterable[str], share: float) -> dict[str, bool]:
        """Held out (True) or trained on (False) for each of `groups`; new ones assigned now.

        Raises:
            LedgerError: `share` not in (0, 1), or an empty group key.
        """
        if not math.isfinite(share) or not 0 < share < 1:
            raise LedgerError(
                f"heldout_share = {share!r}; expected a share in (0, 1) (federation.heldout_share)"
            )
        wanted = list(dict.fromkeys(groups))  # unique, order kept
        if any(not g for g in wanted):
            raise LedgerError("an empty held-out group key; expected 'patient:...' or 'job:...'")
        with self._db.write() as conn:
            known = {
                str(r[0]): bool(r[1])
                for r in conn.execute("SELECT group_key, heldout FROM federation_heldout")
            }
            total = len(known)
            held = sum(known.values())
            now = self._now()
            for group in wanted:
                if group in known:
                    continue
                total += 1
                heldout = held < math.floor(share * total + 0.5)
                held += heldout
                known[group] = heldout
                conn.execute(
                    "INSERT INTO federation_heldout (group_key, heldout, assigned_at) "
                    "VALUES (?, ?, ?)",
                    (group, int(heldout), now),
                )
        return {g: known[g] for g in wanted}

    def counts(self) -> tuple[int, int]:
        """(groups held out, groups trained on)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(heldout), 0), COUNT(*) FROM federation_heldout"
            ).fetchone()
        return int(row[0]), int(row[1]) - int(row[0])
