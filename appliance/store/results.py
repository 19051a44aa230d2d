"""The results store: per-image metadata (``images``) and per-frame findings (``results``).

`ResultStore.save_completed` writes the image row, every frame's row and the job's move to
``done`` in one transaction: a crash (or a bad row) never leaves a done job without
results, nor results on a job that is not done. JSON columns (probabilities, flags,
frame indices, crop, notes) are written with `json.dumps` and come back parsed.

Patient identifiers live in ``images`` on this node only; nothing here logs them, and the
`repr` of a `ResultRecord` leaves its metadata out.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance.io.types import ImageMeta
from appliance.store.audit_events import record_result
from appliance.store.db import (
    StoreBase,
    StoreError,
    from_db_time,
    to_db_time,
)
from appliance.store.jobs import Job, JobStatus, fetch_job, require_status
from appliance.store.outbound import OutboundItem, insert_outbound


def _opt_float(value: float | None) -> float | None:
    # numpy scalars (float32, int64) cannot be bound by sqlite3 nor dumped by json.
    return None if value is None else float(value)


@dataclass(frozen=True)
class FrameResultRow:
    """The findings for one analysed frame, as the pipeline hands them to the store.

    `frame_index` is the frame's index in the file (one of ``ImageMeta.frame_indices``).
    Sizes in mm are None when the image carries no pixel spacing. Numbers may be numpy
    scalars; they are stored as Python floats / ints. `flags` is kept as a tuple.
    """

    frame_index: int
    diagnosis: str | None
    probabilities: Mapping[str, float]
    confidence: float | None
    lesion_area_px: float | None = None
    lesion_area_mm2: float | None = None
    max_diameter_px: float | None = None
    max_diameter_mm: float | None = None
    n_lesions: int | None = None
    flags: Sequence[str] = ()
    result_dir: str | None = None
    seg_uncertainty: float | None = None  # a fold ensemble's disagreement (None: one model)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "frame_index", operator.index(self.frame_index))
        set_(self, "probabilities", {str(k): float(v) for k, v in self.probabilities.items()})
        for name in (
            "confidence",
            "lesion_area_px",
            "lesion_area_mm2",
            "max_diameter_px",
            "max_diameter_mm",
            "seg_uncertainty",
        ):
            set_(self, name, _opt_float(getattr(self, name)))
        if self.n_lesions is not None:
            set_(self, "n_lesions", operator.index(self.n_lesions))
        if isinstance(self.flags, str):
            raise TypeError(f"flags must be a sequence of strings, got the string {self.flags!r}")
        set_(self, "flags", tuple(str(f) for f in self.flags))
        if self.result_dir is not None:
            set_(self, "result_dir", str(self.result_dir))


@dataclass(frozen=True)
class StoredResult:
    """One row of ``results``."""

    id: int
    job_id: int
    frame_index: int
    diagnosis: str | None
    probabilities: dict[str, float]
    confidence: float | None
    lesion_area_px: float | None
    lesion_area_mm2: float | None
    max_diameter_px: float | None
    max_diameter_mm: float | None
    n_lesions: int | None
    flags: tuple[str, ...]
    result_dir: str | None
    model_version: str | None
    backend: str | None
    created_at: datetime
    seg_uncertainty: float | None = None  # schema v7; None: one model, or written before

    @property
    def row(self) -> FrameResultRow:
        """The `FrameResultRow` this was saved from."""
        return FrameResultRow(
            frame_index=self.frame_index,
            diagnosis=self.diagnosis,
            probabilities=self.probabilities,
            confidence=self.confidence,
            lesion_area_px=self.lesion_area_px,
            lesion_area_mm2=self.lesion_area_mm2,
            max_diameter_px=self.max_diameter_px,
            max_diameter_mm=self.max_diameter_mm,
            n_lesions=self.n_lesions,
            flags=self.flags,
            result_dir=self.result_dir,
            seg_uncertainty=self.seg_uncertainty,
        )


@dataclass(frozen=True)
class ResultRecord:
    """A result with its job and image metadata, for lists (GUI worklist, CLI)."""

    result: StoredResult
    job: Job
    meta: ImageMeta = field(repr=False)  # holds patient identifiers


class ResultStore(StoreBase):
    """Reads and writes ``images`` and ``results``; safe to share between threads.

    Raises (every method): StoreError; JobNotFoundError / JobStateError from
    `appliance.store.jobs` where a job id is given.
    """

    def save_completed(
        self,
        job_id: int,
        meta: ImageMeta,
        frames: Sequence[FrameResultRow],
        model_version: str,
        backend: str,
        outbound: Sequence[OutboundItem] = (),
    ) -> Job:
        """Store the image and its frames' results and mark the running job done, atomically.

        `outbound`: the job's SEG / SR to queue for the PACS (`appliance.store.outbound`),
        in the same transaction, so a done job never lacks its sends and no send is queued
        for a job that is not done.

        On any error (the job is not running, two rows for one frame, ...) nothing is
        written and the job stays as it was. Returns the job, now done.
        """
        if not frames:
            raise ValueError(
                f"job {job_id}: expected at least one FrameResultRow, got none; a job "
                "without results must be rejected or failed instead"
            )
        now = to_db_time(self._clock())
        with self._db.write() as conn:
            require_status(conn, job_id, JobStatus.RUNNING, "save results for", self.path)
            conn.execute(
                f"INSERT INTO images ({', '.join(_IMAGE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_IMAGE_COLUMNS))})",
                (job_id, *_image_values(meta)),
            )
            conn.executemany(
                f"INSERT INTO results ({', '.join(_RESULT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})",
                [_result_values(job_id, f, model_version, backend, now) for f in frames],
            )
            conn.execute(
                "UPDATE jobs SET status = 'done', error_code = NULL, reason = NULL, "
                "model_version = ?, updated_at = ?, finished_at = ?, not_before = NULL, "
                "waiting_for = NULL WHERE id = ?",
                (model_version, now, now, job_id),
            )
            insert_outbound(conn, job_id, outbound, now)
            job = fetch_job(conn, job_id, self.path)
            record_result(conn, job, frames, model_version, backend, now)  # same transaction
            return job

    def results_for_job(self, job_id: int) -> list[StoredResult]:
        """The job's results by frame index; empty when it has none."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM results WHERE job_id = ? ORDER BY frame_index", (job_id,)
            ).fetchall()
        return [_result_from_row(row) for row in rows]

    def image_meta(self, job_id: int) -> ImageMeta | None:
        """The stored metadata of the job's image; None before the job is done."""
        with self._db.read() as conn:
            row = conn.execute("SELECT * FROM images WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _meta_from_row(row)

    def list_results(self, limit: int = 100, offset: int = 0) -> list[ResultRecord]:
        """Results with their job and image: newest job first, its frames in order."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got {limit} and {offset}")
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM results ORDER BY job_id DESC, frame_index LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            jobs: dict[int, Job] = {}
            metas: dict[int, ImageMeta] = {}
            for job_id in dict.fromkeys(row["job_id"] for row in rows):
                jobs[job_id] = fetch_job(conn, job_id, self.path)
                image = conn.execute("SELECT * FROM images WHERE job_id = ?", (job_id,)).fetchone()
                if image is None:  # save_completed writes both in one transaction
                    raise StoreError(
                        f"job {job_id} has results but no image row: the database was "
                        "changed outside FAME Node or is damaged",
                        path=self.path,
                    )
                metas[job_id] = _meta_from_row(image)
        return [
            ResultRecord(result=r, job=jobs[r.job_id], meta=metas[r.job_id])
            for r in map(_result_from_row, rows)
        ]

    def count_results(self) -> int:
        """How many result rows (frames) there are, for paging `list_results`."""
        with self._db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


# -- rows <-> objects ----------------------------------------------------------------------

_IMAGE_COLUMNS = (
    "job_id",
    "source_format",
    "modality",
    "patient_id",
    "patient_name",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "study_date",
    "manufacturer",
    "model_name",
    "photometric",
    "bits_stored",
    "n_frames_total",
    "frame_indices",
    "pixel_spacing_row_mm",
    "pixel_spacing_col_mm",
    "crop",
    "notes",
)

_RESULT_COLUMNS = (
    "job_id",
    "frame_index",
    "diagnosis",
    "probabilities",
    "confidence",
    "lesion_area_px",
    "lesion_area_mm2",
    "max_diameter_px",
    "max_diameter_mm",
    "n_lesions",
    "flags",
    "result_dir",
    "model_version",
    "backend",
    "created_at",
    "seg_uncertainty",
)


def _image_values(meta: ImageMeta) -> tuple[Any, ...]:
    spacing = meta.pixel_spacing_mm
    return (
        meta.source_format,
        meta.modality,
        meta.patient_id,
        meta.patient_name,
        meta.study_instance_uid,
        meta.series_instance_uid,
        meta.sop_instance_uid,
        meta.sop_class_uid,
        meta.study_date,
        meta.manufacturer,
        meta.model_name,
        meta.photometric,
        None if meta.bits_stored is None else int(meta.bits_stored),
        int(meta.n_frames_total),
        json.dumps([int(i) for i in meta.frame_indices]),
        None if spacing is None else float(spacing[0]),
        None if spacing is None else float(spacing[1]),
        None if meta.crop is None else json.dumps([int(v) for v in meta.crop]),
        json.dumps([str(n) for n in meta.notes]),
    )


def _meta_from_row(row: sqlite3.Row) -> ImageMeta:
    row_mm, col_mm = row["pixel_spacing_row_mm"], row["pixel_spacing_col_mm"]
    crop = None if row["crop"] is None else json.loads(row["crop"])
    return ImageMeta(
        source_format=row["source_format"],
        modality=row["modality"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        patient_id=row["patient_id"],
        patient_name=row["patient_name"],
        study_date=row["study_date"],
        manufacturer=row["manufacturer"],
        model_name=row["model_name"],
        photometric=row["photometric"],
        bits_stored=row["bits_stored"],
        pixel_spacing_mm=None if row_mm is None or col_mm is None else (row_mm, col_mm),
        crop=None if crop is None else (crop[0], crop[1], crop[2], crop[3]),
        n_frames_total=row["n_frames_total"],
        frame_indices=tuple(json.loads(row["frame_indices"])),
        notes=tuple(json.loads(row["notes"])),
    )


def _result_values(
    job_id: int, frame: FrameResultRow, model_version: str, backend: str, now: str
) -> tuple[Any, ...]:
    return (
        job_id,
        frame.frame_index,
        frame.diagnosis,
        json.dumps(dict(frame.probabilities)),
        frame.confidence,
        frame.lesion_area_px,
        frame.lesion_area_mm2,
        frame.max_diameter_px,
        frame.max_diameter_mm,
        frame.n_lesions,
        json.dumps(list(frame.flags)),
        frame.result_dir,
        model_version,
        backend,
        now,
        frame.seg_uncertainty,
    )


def _result_from_row(row: sqlite3.Row) -> StoredResult:
    return StoredResult(
        id=row["id"],
        job_id=row["job_id"],
        frame_index=row["frame_index"],
        diagnosis=row["diagnosis"],
        probabilities=json.loads(row["probabilities"]),
        confidence=row["confidence"],
        lesion_area_px=row["lesion_area_px"],
        lesion_area_mm2=row["lesion_area_mm2"],
        max_diameter_px=row["max_diameter_px"],
        max_diameter_mm=row["max_diameter_mm"],
        n_lesions=row["n_lesions"],
        flags=tuple(json.loads(row["flags"])),
        result_dir=row["result_dir"],
        model_version=row["model_version"],
        backend=row["backend"],
        created_at=from_db_time(row["created_at"]),
        seg_uncertainty=row["seg_uncertainty"],
    )
