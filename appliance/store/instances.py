"""Which DICOM instance a job holds: re-sends told apart from UID conflicts.

A SOP Instance UID is meant to name one image for ever, but misconfigured modalities and
anonymisers give the same UID to images of different patients. So a UID alone never makes
a job a duplicate. A job is a **re-send** of an earlier one only when it is the same
instance: same SOP Instance UID, same Patient ID, same Study Instance UID and the same
decoded pixels (`pixel_sha256`, over the frames as analysed, so a re-send in another
transfer syntax still matches). Anything else with a UID already held is a **conflict**:
the job is analysed on its own, ``jobs.conflict_of`` names the job holding the UID, and its
results are flagged; nothing of one ever points at the other's results.

`identity_digest` (pure) computes the pixel digest; `register_instance` records the claim
inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray


class InstanceVerdict(StrEnum):
    NEW = "new"  # the UID is now this job's
    RESEND = "resend"  # the same instance as `other`: a duplicate
    CONFLICT = "conflict"  # another instance under the UID `other` holds


@dataclass(frozen=True)
class InstanceIdentity:
    """What makes two files the same DICOM instance."""

    sop_instance_uid: str
    patient_id: str | None
    study_instance_uid: str | None
    pixel_sha256: str


@dataclass(frozen=True)
class InstanceClaim:
    verdict: InstanceVerdict
    other: int | None = None  # the job holding the UID (re-send or conflict)


def identity_digest(frames: Sequence[NDArray[np.uint8]], frame_indices: Sequence[int]) -> str:
    """sha256 over the analysed frames: their shapes, indices and pixel values.

    Pure. Two files decode to the same digest exactly when the frames the node analyses
    are identical, whatever their encoding.
    """
    digest = hashlib.sha256()
    digest.update(repr(tuple(int(i) for i in frame_indices)).encode("ascii"))
    for frame in frames:
        digest.update(repr(tuple(frame.shape)).encode("ascii"))
        digest.update(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def register_instance(
    conn: sqlite3.Connection, job_id: int, identity: InstanceIdentity, now: str
) -> InstanceClaim:
    """Record that running job `job_id` decoded to `identity`; say what it is.

    Runs inside the caller's write transaction. A UID held by a job that is queued,
    running or done stays that job's: this one is its re-send (identical identity) or a
    conflict (anything else, including a holder recorded before identities were kept).
    A UID held by a job that ended without results (rejected, failed, duplicate) is
    handed to this job.
    """
    uid = identity.sop_instance_uid
    row = conn.execute(
        "SELECT s.job_id, s.patient_id, s.study_instance_uid, s.pixel_sha256, j.status "
        "FROM sop_uids s JOIN jobs j ON j.id = s.job_id WHERE s.uid = ?",
        (uid,),
    ).fetchone()
    claim = InstanceClaim(InstanceVerdict.NEW)
    if row is not None and row["job_id"] != job_id and row["status"] in _HOLDING:
        other = int(row["job_id"])
        held = (row["patient_id"], row["study_instance_uid"], row["pixel_sha256"])
        mine = (identity.patient_id, identity.study_instance_uid, identity.pixel_sha256)
        # A holder from before schema v3 has no pixel digest: never assumed identical.
        same = row["pixel_sha256"] is not None and held == mine
        claim = InstanceClaim(InstanceVerdict.RESEND if same else InstanceVerdict.CONFLICT, other)
    elif row is None:
        conn.execute(
            "INSERT INTO sop_uids (uid, job_id, patient_id, study_instance_uid, pixel_sha256) "
            "VALUES (?, ?, ?, ?, ?)",
            (uid, job_id, identity.patient_id, identity.study_instance_uid, identity.pixel_sha256),
        )
    else:  # its own again, or the holder produced no result: the UID is this job's now
        conn.execute(
            "UPDATE sop_uids SET job_id = ?, patient_id = ?, study_instance_uid = ?, "
            "pixel_sha256 = ? WHERE uid = ?",
            (job_id, identity.patient_id, identity.study_instance_uid, identity.pixel_sha256, uid),
        )
    conn.execute(
        "UPDATE jobs SET sop_instance_uid = ?, pixel_sha256 = ?, conflict_of = ?, "
        "updated_at = ? WHERE id = ?",
        (
            uid,
            identity.pixel_sha256,
            claim.other if claim.verdict is InstanceVerdict.CONFLICT else None,
            now,
            job_id,
        ),
    )
    return claim


_HOLDING = ("queued", "running", "done")
