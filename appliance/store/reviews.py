"""Clinicians' decisions on results, in the ``reviews`` table, and the local training set.

A review is about one analysed frame of a done job. Decisions::

    confirmed       the model's result is right: its diagnosis and its mask
    corrected       the clinician changed the diagnosis and / or redrew the mask;
                    `diagnosis` is the clinician's, `mask_path` the redrawn mask
                    (None: the model's mask stands)
    mask_rejected   the mask is wrong and was not redrawn; `diagnosis` is the one the
                    clinician last gave or accepted (None when there was none)

Every row holds the frame's whole state after the decision: the store carries earlier
corrections forward (a diagnosis corrected, then the mask redrawn, gives one row with
both). The *current* review of a frame is its newest row that was not undone; `undo`
stamps ``undone_at`` on the current one, so the one before it is current again. Nothing
is deleted: the table is the audit trail of who decided what, when.

A redrawn mask is written into the job's results folder as ``frame_NNN_mask_reviewed.png``
(0 / 255, the frame's size); a later redraw of the same frame gets ``..._reviewed_2.png``
and so on, so the file of an earlier row (current again after an undo) is never
overwritten.

`training_set()` is what federated fine-tuning reads: the frames whose current review is
confirmed or corrected, with the input file, the frame index in it, the label and the
mask to train on.

Errors (all `StoreError`)::

    StoreError
    └── ReviewTargetError   no result for that job and frame (the job is not done, or the
                            frame was not analysed)

Bad arguments (an unknown diagnosis, a mask of the wrong size, an empty reviewer) raise
`ValueError` with what was received and what is expected.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from appliance.results.durable import write_atomic
from appliance.store.audit_events import record_review, record_review_undone
from appliance.store.db import StoreBase, StoreError, from_db_time

Decision = Literal["confirmed", "corrected", "mask_rejected"]
DECISIONS: tuple[str, ...] = ("confirmed", "corrected", "mask_rejected")
TRAINING_DECISIONS: tuple[str, ...] = ("confirmed", "corrected")


class ReviewTargetError(StoreError):
    """There is no result for this job and frame, so there is nothing to review."""

    MESSAGE = "job {job} has no result for frame {frame}: review analysed frames of done jobs"

    def __init__(self, job_id: int, frame_index: int, *, path: Path | None = None) -> None:
        self.job_id = job_id
        self.frame_index = frame_index
        super().__init__(self.MESSAGE.format(job=job_id, frame=frame_index), path=path)


class NothingToConfirmError(ReviewTargetError):
    """The frame was flagged out_of_distribution: the model gave no diagnosis to confirm."""

    MESSAGE = (
        "job {job} frame {frame} is unlike the images the model was trained on "
        "(out_of_distribution), so its diagnosis is not shown and cannot be confirmed: "
        "choose the diagnosis yourself"
    )


@dataclass(frozen=True)
class Review:
    """One row of ``reviews``. `mask_path` is absolute (None: the model's mask)."""

    id: int
    job_id: int
    frame_index: int
    decision: Decision
    diagnosis: str | None
    mask_path: Path | None
    reviewer: str
    at: datetime
    note: str | None
    undone_at: datetime | None


@dataclass(frozen=True)
class TrainingExample:
    """One frame of the local training set.

    Read the image with `appliance.io.reader.read_file(image_path)`: `frame_index` is the
    frame's index in that file, and the mask has the size of the frame the reader returns
    (cropped to the ultrasound region). `sha256` is the file's content when it was
    received; a file changed since then must not be trained on.
    """

    job_id: int
    frame_index: int
    image_path: Path
    sha256: str | None
    label: str
    mask_path: Path
    mask_source: Literal["model", "reviewed"]
    decision: Decision
    reviewer: str
    reviewed_at: datetime


# The current review of every frame: its newest row that was not undone.
CURRENT_REVIEWS_SQL = """
    SELECT * FROM (
        SELECT r.*, ROW_NUMBER() OVER (
            PARTITION BY r.job_id, r.frame_index ORDER BY r.id DESC) AS rank_
        FROM reviews r WHERE r.undone_at IS NULL
    ) WHERE rank_ = 1
"""


def review_from_row(row: sqlite3.Row) -> Review:
    """A `Review` from a ``SELECT * FROM reviews`` row."""
    return Review(
        id=row["id"],
        job_id=row["job_id"],
        frame_index=row["frame_index"],
        decision=cast(Decision, row["decision"]),
        diagnosis=row["diagnosis"],
        mask_path=None if row["mask_path"] is None else Path(row["mask_path"]),
        reviewer=row["reviewer"],
        at=from_db_time(row["at"]),
        note=row["note"],
        undone_at=None if row["undone_at"] is None else from_db_time(row["undone_at"]),
    )


def current_reviews(conn: sqlite3.Connection, job_id: int | None = None) -> list[Review]:
    """The current review of every reviewed frame (of one job, when `job_id` is given)."""
    if job_id is None:
        rows = conn.execute(CURRENT_REVIEWS_SQL + " ORDER BY job_id, frame_index").fetchall()
    else:
        rows = conn.execute(
            CURRENT_REVIEWS_SQL + " AND job_id = ? ORDER BY frame_index", (job_id,)
        ).fetchall()
    return [review_from_row(r) for r in rows]


def model_mask_name(frame_index: int) -> str:
    return f"frame_{frame_index:03d}_mask.png"


class ReviewStore(StoreBase):
    """Records and reads clinicians' decisions; safe to share between threads.

    Raises (every method): StoreError; ReviewTargetError where a job and frame are given.
    """

    # -- decisions -------------------------------------------------------------------------

    def confirm(
        self, job_id: int, frame_index: int, reviewer: str, *, note: str | None = None
    ) -> Review:
        """The model's diagnosis and mask are right.

        Refused (`NothingToConfirmError`) for a frame flagged ``out_of_distribution``: the
        GUI withholds its diagnosis, which a confirmation would put into the federation's
        training set unseen; `correct_diagnosis` stays open."""
        reviewer = _check_reviewer(reviewer)
        with self._db.write() as conn:
            result = self._result(conn, job_id, frame_index)
            if "out_of_distribution" in json.loads(result["flags"]):
                raise NothingToConfirmError(job_id, frame_index, path=self.path)
            return self._insert(
                conn, job_id, frame_index, "confirmed", result["diagnosis"], None, reviewer, note
            )

    def correct_diagnosis(
        self,
        job_id: int,
        frame_index: int,
        diagnosis: str,
        reviewer: str,
        *,
        note: str | None = None,
    ) -> Review:
        """Set the diagnosis; a redrawn or rejected mask stays as it was.

        Giving the model's own diagnosis on a frame whose mask was not changed is a
        confirmation and is recorded as one.
        """
        reviewer = _check_reviewer(reviewer)
        with self._db.write() as conn:
            result = self._result(conn, job_id, frame_index)
            classes = sorted(json.loads(result["probabilities"]))
            if diagnosis not in classes:
                raise ValueError(
                    f"unknown diagnosis {diagnosis!r} for job {job_id}; expected one of the "
                    f"model's classes {classes}"
                )
            current = self._current(conn, job_id, frame_index)
            if current is not None and current.decision == "mask_rejected":
                decision: Decision = "mask_rejected"
                mask = None
            else:
                mask = current.mask_path if current is not None else None
                same = diagnosis == result["diagnosis"] and mask is None
                decision = "confirmed" if same else "corrected"
            return self._insert(
                conn, job_id, frame_index, decision, diagnosis, mask, reviewer, note
            )

    def reject_mask(
        self, job_id: int, frame_index: int, reviewer: str, *, note: str | None = None
    ) -> Review:
        """The mask is wrong and is not redrawn: the frame leaves the training set."""
        reviewer = _check_reviewer(reviewer)
        with self._db.write() as conn:
            self._result(conn, job_id, frame_index)
            current = self._current(conn, job_id, frame_index)
            diagnosis = None if current is None else current.diagnosis
            return self._insert(
                conn, job_id, frame_index, "mask_rejected", diagnosis, None, reviewer, note
            )

    def correct_mask(
        self,
        job_id: int,
        frame_index: int,
        mask: NDArray[np.generic],
        reviewer: str,
        *,
        note: str | None = None,
    ) -> Review:
        """Store a redrawn mask (non-zero = lesion) as the frame's mask to train on.

        The diagnosis is the clinician's current one, else the model's.

        Raises:
            ValueError: `mask` is not 2-D or not the size of the model's mask.
        """
        reviewer = _check_reviewer(reviewer)
        binary = np.asarray(mask)
        if binary.ndim != 2:
            raise ValueError(f"expected a 2-D mask (rows, columns), got shape {binary.shape}")
        with self._db.write() as conn:
            result = self._result(conn, job_id, frame_index)
            folder = _result_folder(result, job_id, self.path)
            model_mask = folder / model_mask_name(frame_index)
            expected = _png_shape(model_mask)
            if expected is not None and binary.shape != expected:
                raise ValueError(
                    f"the corrected mask of job {job_id} frame {frame_index} has shape "
                    f"{binary.shape}, expected {expected} (the frame's rows and columns, as "
                    f"in {model_mask.name})"
                )
            current = self._current(conn, job_id, frame_index)
            diagnosis = result["diagnosis"]
            if current is not None and current.diagnosis is not None:
                diagnosis = current.diagnosis
            target = _free_reviewed_name(folder, frame_index)
            _write_mask_png(target, binary)
            try:
                return self._insert(
                    conn, job_id, frame_index, "corrected", diagnosis, target, reviewer, note
                )
            except BaseException:
                target.unlink(missing_ok=True)
                raise

    def undo(self, review_id: int, *, by: str | None = None) -> Review:
        """Undo this review, which must be the current one of its frame; returns it, undone.

        `by` is who takes it back, for the audit log (default: its reviewer; the GUI
        undoes only its own session's decisions).

        Raises:
            ValueError: there is no such review, it was undone already, or a newer
                decision on the frame would have to be undone first.
        """
        with self._db.write() as conn:
            row = conn.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
            if row is None:
                raise ValueError(f"there is no review {review_id} to undo")
            review = review_from_row(row)
            if review.undone_at is not None:
                raise ValueError(f"review {review_id} was already undone at {review.undone_at}")
            current = self._current(conn, review.job_id, review.frame_index)
            if current is None or current.id != review_id:
                raise ValueError(
                    f"review {review_id} is not the latest decision on job {review.job_id} "
                    f"frame {review.frame_index}; undo review "
                    f"{current.id if current else '?'} first"
                )
            now = self._now()
            conn.execute("UPDATE reviews SET undone_at = ? WHERE id = ?", (now, review_id))
            undone = conn.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
            record_review_undone(
                conn,
                review_id=review_id,
                job_id=review.job_id,
                frame_index=review.frame_index,
                decision=review.decision,
                by=_check_reviewer(by or review.reviewer),
                at=now,
            )
            return review_from_row(undone)

    def undo_last(self, job_id: int, frame_index: int) -> Review | None:
        """Undo the frame's current review; None when there is none."""
        with self._db.read() as conn:
            current = self._current(conn, job_id, frame_index)
        return None if current is None else self.undo(current.id)

    # -- reading ---------------------------------------------------------------------------

    def current(self, job_id: int, frame_index: int) -> Review | None:
        """The frame's current review, or None when it was never reviewed (or all undone)."""
        with self._db.read() as conn:
            return self._current(conn, job_id, frame_index)

    def current_for_job(self, job_id: int) -> dict[int, Review]:
        """The current review of each reviewed frame of the job, by frame index."""
        with self._db.read() as conn:
            return {r.frame_index: r for r in current_reviews(conn, job_id)}

    def history(self, job_id: int, frame_index: int | None = None) -> list[Review]:
        """Every review of the job (or of one frame), undone ones included, newest first."""
        with self._db.read() as conn:
            if frame_index is None:
                rows = conn.execute(
                    "SELECT * FROM reviews WHERE job_id = ? ORDER BY id DESC", (job_id,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM reviews WHERE job_id = ? AND frame_index = ? ORDER BY id DESC",
                    (job_id, frame_index),
                ).fetchall()
        return [review_from_row(r) for r in rows]

    def training_set(self) -> list[TrainingExample]:
        """The frames whose current review is confirmed or corrected, oldest job first."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"""SELECT c.*, j.path AS image_path, j.sha256 AS sha256,
                           res.result_dir AS result_dir
                    FROM ({CURRENT_REVIEWS_SQL}) c
                    JOIN jobs j ON j.id = c.job_id
                    JOIN results res ON res.job_id = c.job_id
                                    AND res.frame_index = c.frame_index
                    WHERE c.decision IN ({", ".join(repr(d) for d in TRAINING_DECISIONS)})
                      AND j.status = 'done'
                    ORDER BY c.job_id, c.frame_index"""
            ).fetchall()
        examples: list[TrainingExample] = []
        for row in rows:
            review = review_from_row(row)
            if review.diagnosis is None:  # every confirmed / corrected row has one
                continue
            if review.mask_path is not None:
                mask, source = review.mask_path, "reviewed"
            else:
                folder = _result_folder(row, review.job_id, self.path)
                mask, source = folder / model_mask_name(review.frame_index), "model"
            examples.append(
                TrainingExample(
                    job_id=review.job_id,
                    frame_index=review.frame_index,
                    image_path=Path(row["image_path"]),
                    sha256=row["sha256"],
                    label=review.diagnosis,
                    mask_path=mask,
                    mask_source=cast(Literal["model", "reviewed"], source),
                    decision=review.decision,
                    reviewer=review.reviewer,
                    reviewed_at=review.at,
                )
            )
        return examples

    def change_token(self) -> Hashable:
        """A value that changes whenever a review is recorded or undone (cheap to poll)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0), COUNT(undone_at) FROM reviews"
            ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2]))

    # -- internals -------------------------------------------------------------------------

    def _result(self, conn: sqlite3.Connection, job_id: int, frame_index: int) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT r.* FROM results r JOIN jobs j ON j.id = r.job_id "
            "WHERE r.job_id = ? AND r.frame_index = ? AND j.status = 'done'",
            (job_id, frame_index),
        ).fetchone()
        if row is None:
            raise ReviewTargetError(job_id, frame_index, path=self.path)
        return row

    def _current(self, conn: sqlite3.Connection, job_id: int, frame_index: int) -> Review | None:
        row = conn.execute(
            "SELECT * FROM reviews WHERE job_id = ? AND frame_index = ? AND undone_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (job_id, frame_index),
        ).fetchone()
        return None if row is None else review_from_row(row)

    def _insert(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        frame_index: int,
        decision: Decision,
        diagnosis: str | None,
        mask_path: Path | None,
        reviewer: str,
        note: str | None,
    ) -> Review:
        cur = conn.execute(
            "INSERT INTO reviews (job_id, frame_index, decision, diagnosis, mask_path, "
            "reviewer, at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                frame_index,
                decision,
                diagnosis,
                None if mask_path is None else str(mask_path),
                reviewer,
                self._now(),
                note,
            ),
        )
        row = conn.execute("SELECT * FROM reviews WHERE id = ?", (cur.lastrowid,)).fetchone()
        review = review_from_row(row)
        record_review(  # in the decision's transaction: both are committed or neither
            conn,
            review_id=review.id,
            job_id=job_id,
            frame_index=frame_index,
            decision=decision,
            diagnosis=diagnosis,
            mask_redrawn=mask_path is not None,
            with_note=bool(note),
            reviewer=reviewer,
            at=row["at"],
        )
        return review


def _check_reviewer(reviewer: str) -> str:
    name = reviewer.strip()
    if not name:
        raise ValueError("a review needs the reviewer's name (who decided); got an empty string")
    return name


def _result_folder(row: sqlite3.Row, job_id: int, db_path: Path) -> Path:
    if row["result_dir"] is None:
        raise StoreError(
            f"job {job_id} has a result without a results folder: the database was changed "
            "outside FAME Node or is damaged",
            path=db_path,
        )
    return Path(row["result_dir"])


def _png_shape(path: Path) -> tuple[int, int] | None:
    """(rows, columns) of a PNG from its header, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError:
        return None
    return (height, width)


def _free_reviewed_name(folder: Path, frame_index: int) -> Path:
    # Called inside the write transaction: writers take turns, so the name stays free.
    stem = f"frame_{frame_index:03d}_mask_reviewed"
    candidate = folder / f"{stem}.png"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}_{n}.png"
        n += 1
    return candidate


def _write_mask_png(path: Path, mask: NDArray[np.generic]) -> None:
    """Durable before the review is committed: a clinician's mask survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(((np.asarray(mask) > 0) * 255).astype(np.uint8))
    write_atomic(path, lambda fh: img.save(fh, format="PNG"))
