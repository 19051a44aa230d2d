"""The results store: one transaction for image, frames and the job's move to done."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.io.types import ImageMeta
from appliance.store import (
    FrameResultRow,
    JobQueue,
    JobStateError,
    JobStatus,
    ResultStore,
    StoreError,
)

META = ImageMeta(
    source_format="dicom",
    modality="US",
    sop_instance_uid="1.2.826.0.1.3",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
    study_instance_uid="1.2.826.0.1.1",
    series_instance_uid="1.2.826.0.1.2",
    patient_id="PID-0042",
    patient_name="Doe^Jane",
    study_date="20240131",
    manufacturer="GE",
    model_name="LOGIQ E9",
    photometric="YBR_FULL_422",
    bits_stored=8,
    pixel_spacing_mm=(0.1, 0.12),
    crop=(10, 20, 610, 420),
    n_frames_total=120,
    frame_indices=(0, 60),
    notes=("frames sampled: 2 of 120",),
)


def frame(index: int, diagnosis: str = "benign") -> FrameResultRow:
    return FrameResultRow(
        frame_index=index,
        diagnosis=diagnosis,
        probabilities={"normal": 0.1, "benign": 0.7, "malignant": 0.2},
        confidence=0.7,
        lesion_area_px=1234.5,
        lesion_area_mm2=14.8,
        max_diameter_px=50.0,
        max_diameter_mm=5.5,
        n_lesions=1,
        flags=["ensemble_disagreement"],
        result_dir="/results/job-1",
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite3"


@pytest.fixture
def queue(db: Path) -> Iterator[JobQueue]:
    with JobQueue(db) as q:
        yield q


@pytest.fixture
def store(db: Path) -> Iterator[ResultStore]:
    with ResultStore(db) as s:
        yield s


def running_job(queue: JobQueue, name: str) -> int:
    outcome = queue.enqueue(Path(f"/inbox/{name}"), hashlib.sha256(name.encode()).hexdigest(), 1)
    claimed = queue.claim(outcome.id)
    assert claimed is not None
    return claimed.id


def test_save_completed_stores_everything_and_marks_done(
    queue: JobQueue, store: ResultStore
) -> None:
    job_id = running_job(queue, "a.dcm")
    rows = [frame(60, "malignant"), frame(0)]
    done = store.save_completed(job_id, META, rows, "fame-1.0", "onnxruntime/cpu")
    assert done.status is JobStatus.DONE and done.model_version == "fame-1.0"
    assert done.finished_at is not None and done.reason is None
    assert queue.get(job_id) == done
    stored = store.results_for_job(job_id)
    assert [r.frame_index for r in stored] == [0, 60]
    assert [r.row for r in stored] == [rows[1], rows[0]]  # parsed back to what was given
    first = stored[0]
    assert first.probabilities == {"normal": 0.1, "benign": 0.7, "malignant": 0.2}
    assert first.flags == ("ensemble_disagreement",)
    assert (first.job_id, first.model_version, first.backend) == (
        job_id,
        "fame-1.0",
        "onnxruntime/cpu",
    )
    assert store.image_meta(job_id) == META
    assert store.count_results() == 2


def test_numpy_scalars_and_missing_sizes_are_stored(queue: JobQueue, store: ResultStore) -> None:
    job_id = running_job(queue, "a.png")
    row = FrameResultRow(
        frame_index=np.int64(0),  # type: ignore[arg-type]
        diagnosis="normal",
        probabilities={"normal": np.float32(0.5), "benign": np.float64(0.5)},  # type: ignore[dict-item]
        confidence=np.float32(0.5),  # type: ignore[arg-type]
        lesion_area_px=np.float32(0.0),  # type: ignore[arg-type]
        n_lesions=np.int64(0),  # type: ignore[arg-type]
    )
    meta = ImageMeta(source_format="png")
    store.save_completed(job_id, meta, [row], "v", "cpu")
    (stored,) = store.results_for_job(job_id)
    assert stored.row == row
    assert (stored.lesion_area_mm2, stored.max_diameter_mm, stored.result_dir) == (None,) * 3
    assert type(stored.n_lesions) is int and type(stored.confidence) is float
    assert store.image_meta(job_id) == meta


def test_a_bad_row_leaves_the_job_running_with_nothing_written(
    queue: JobQueue, store: ResultStore, db: Path
) -> None:
    job_id = running_job(queue, "a.dcm")
    with pytest.raises(StoreError, match="UNIQUE"):
        store.save_completed(job_id, META, [frame(0), frame(0)], "v", "cpu")  # same frame twice
    assert queue.get(job_id).status is JobStatus.RUNNING
    assert store.image_meta(job_id) is None and store.results_for_job(job_id) == []
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
        assert raw.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    # The same job can then still be completed.
    store.save_completed(job_id, META, [frame(0)], "v", "cpu")
    assert queue.get(job_id).status is JobStatus.DONE


def test_results_only_for_a_running_job(queue: JobQueue, store: ResultStore) -> None:
    queued = queue.enqueue(Path("/inbox/q.png"), "0" * 64, 1).id
    with pytest.raises(JobStateError, match="expected 'running'"):
        store.save_completed(queued, META, [frame(0)], "v", "cpu")
    done = running_job(queue, "d.png")
    store.save_completed(done, META, [frame(0)], "v", "cpu")
    with pytest.raises(JobStateError, match="it is 'done'"):
        store.save_completed(done, META, [frame(1)], "v", "cpu")  # a replay
    assert store.image_meta(queued) is None and len(store.results_for_job(done)) == 1
    with pytest.raises(ValueError, match="at least one FrameResultRow"):
        store.save_completed(running_job(queue, "e.png"), META, [], "v", "cpu")


def test_list_results_joins_jobs_and_images_newest_first(
    queue: JobQueue, store: ResultStore
) -> None:
    older = running_job(queue, "old.dcm")
    store.save_completed(older, META, [frame(0), frame(60)], "v1", "cpu")
    newer = running_job(queue, "new.png")
    store.save_completed(newer, ImageMeta(source_format="png"), [frame(0)], "v2", "cuda")
    records = store.list_results()
    assert [(r.job.id, r.result.frame_index) for r in records] == [
        (newer, 0),
        (older, 0),
        (older, 60),
    ]
    assert records[0].job.path == Path("/inbox/new.png") and records[0].meta.source_format == "png"
    assert records[1].meta.patient_id == "PID-0042"
    assert "Doe^Jane" not in repr(records[1]) and "PID-0042" not in repr(records[1])
    assert [r.result.frame_index for r in store.list_results(limit=1, offset=2)] == [60]


def test_flags_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        FrameResultRow(0, "benign", {}, 0.5, flags="low_confidence")
