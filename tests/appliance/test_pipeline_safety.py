"""Patient safety and passing faults through the real pipeline: the bytes analysed are the
bytes queued, a shared SOP Instance UID never hands one image another's findings, and a
locked database or a full disk delays a job instead of failing it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom, write_phantom_png
from appliance.service import NodeParts
from appliance.store.jobs import JobStatus
from tests.appliance.pipelineutil import node_parts, process_file


def _probabilities(parts: NodeParts, job_id: int) -> dict[str, float]:
    (row,) = parts.results.results_for_job(job_id)
    return row.probabilities


def test_a_file_replaced_while_queued_gets_its_own_findings(tmp_path: Path) -> None:
    """A PACS re-export under the same name: each content is analysed as itself."""
    parts = node_parts(tmp_path / "node", workers=1)
    inbox = tmp_path / "in"
    inbox.mkdir()
    path = inbox / "US0001.png"
    write_phantom_png(path, make_phantom(PhantomSpec(seed=11, semi_axes_px=(60, 40))))
    first = parts.intake.submit(path, inside_inbox=False).id
    write_phantom_png(path, make_phantom(PhantomSpec(seed=12, semi_axes_px=(20, 15))))
    second = parts.intake.submit(path, inside_inbox=False).id
    assert first != second
    for job_id in (first, second):
        job = parts.queue.claim(job_id)
        assert job is not None
        parts.pipeline.process(job)
    # Reference: each content processed alone in a fresh node gives the same findings.
    write_phantom_png(tmp_path / "a.png", make_phantom(PhantomSpec(seed=11, semi_axes_px=(60, 40))))
    write_phantom_png(tmp_path / "b.png", make_phantom(PhantomSpec(seed=12, semi_axes_px=(20, 15))))
    alone = node_parts(tmp_path / "alone", workers=1)
    ref_a, ref_b = process_file(alone, tmp_path / "a.png"), process_file(alone, tmp_path / "b.png")
    assert _probabilities(parts, first) == _probabilities(alone, ref_a)
    assert _probabilities(parts, second) == _probabilities(alone, ref_b)
    assert _probabilities(parts, first) != _probabilities(parts, second)


def _dicom(path: Path, *, seed: int, patient: str, uid: str, study: str) -> Path:
    write_phantom_dicom(
        path,
        make_phantom(PhantomSpec(seed=seed)),
        pixel_spacing_mm=0.1,
        patient_id=patient,
        patient_name=f"TEST^{patient}",
        study_uid=study,
    )
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(path, enforce_file_format=True)
    return path


def test_two_patients_with_one_sop_instance_uid_each_get_their_own_findings(
    tmp_path: Path,
) -> None:
    parts = node_parts(tmp_path / "node", workers=1)
    uid = "1.2.826.0.1.3680043.10.511.3.1"
    a = _dicom(tmp_path / "a.dcm", seed=21, patient="PAT-A", uid=uid, study="1.2.3.1")
    b = _dicom(tmp_path / "b.dcm", seed=22, patient="PAT-B", uid=uid, study="1.2.3.2")
    first, second = process_file(parts, a), process_file(parts, b)
    job_b = parts.queue.get(second)
    assert job_b.status is JobStatus.DONE, job_b.reason  # analysed, not a "duplicate"
    assert job_b.duplicate_of is None and job_b.conflict_of == first
    rows_b = parts.results.results_for_job(second)
    assert rows_b and all("uid_conflict" in r.flags for r in rows_b)
    assert "uid_conflict" not in parts.results.results_for_job(first)[0].flags
    meta_b = parts.results.image_meta(second)
    assert meta_b is not None and meta_b.patient_id == "PAT-B"
    # Its own findings: those of b analysed alone in a fresh node.
    alone = node_parts(tmp_path / "alone", workers=1)
    assert _probabilities(parts, second) == _probabilities(alone, process_file(alone, b))
    result = json.loads((Path(str(rows_b[0].result_dir)) / "result.json").read_text())
    assert result["image"]["uid_conflict_with_job"] == first
    assert "b.dcm" not in json.dumps(result)  # no file name in an exported artefact


def test_the_same_instance_sent_twice_is_a_resend(tmp_path: Path) -> None:
    parts = node_parts(tmp_path / "node", workers=1)
    uid = "1.2.826.0.1.3680043.10.511.3.2"
    a = _dicom(tmp_path / "a.dcm", seed=31, patient="PAT-A", uid=uid, study="1.2.3.1")
    again = tmp_path / "again.dcm"
    ds = pydicom.dcmread(a)
    ds.InstitutionName = "re-sent by another router"  # other bytes, same instance
    ds.save_as(again, enforce_file_format=True)
    first, second = process_file(parts, a), process_file(parts, again)
    dup = parts.queue.get(second)
    assert dup.status is JobStatus.DUPLICATE and dup.duplicate_of == first
    assert parts.results.results_for_job(second) == []


def test_a_database_locked_past_its_timeout_delays_the_job_not_fails_it(
    tmp_path: Path,
) -> None:
    """A backup tool holding the write lock for longer than the busy timeout."""
    parts = node_parts(tmp_path / "node", workers=1)
    path = tmp_path / "a.png"
    write_phantom_png(path, make_phantom(PhantomSpec(seed=41)))
    job_id = parts.intake.submit(path, inside_inbox=False).id
    job = parts.queue.claim(job_id)
    assert job is not None
    locker = sqlite3.connect(parts.queue.path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # holds the write lock
    release = threading.Timer(12.0, locker.rollback)  # past the 10 s busy timeout
    release.start()
    t0 = time.monotonic()
    try:
        parts.pipeline.process(job)
    finally:
        release.join()
        locker.close()
    assert time.monotonic() - t0 >= 10.0
    after = parts.queue.get(job_id)
    # The save failed while locked; the job went back to the queue to wait, not `failed`.
    assert after.status is JobStatus.QUEUED, after.reason
    assert after.waiting_for == "the database (locked or full)" and after.retries == 1
    retried = parts.queue.claim(job_id)
    assert retried is not None
    parts.pipeline.process(retried)
    assert parts.queue.get(job_id).status is JobStatus.DONE


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return ok.returncode == 0


def test_a_full_results_disk_delays_the_job_until_space_returns(tmp_path: Path) -> None:
    results = tmp_path / "node" / "results"
    if not _mount_tmpfs(results, "256k"):
        pytest.skip("needs to mount a small tmpfs (root in a container that allows mount)")
    try:
        filler = results / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        parts = node_parts(tmp_path / "node", workers=1)
        path = tmp_path / "a.png"
        write_phantom_png(path, make_phantom(PhantomSpec(seed=51)))
        job_id = parts.intake.submit(path, inside_inbox=False).id
        job = parts.queue.claim(job_id)
        assert job is not None
        parts.pipeline.process(job)
        waiting = parts.queue.get(job_id)
        assert waiting.status is JobStatus.QUEUED, waiting.reason
        assert waiting.waiting_for == f"disk space in {results}"
        assert parts.health.snapshot()[0]["condition"] == f"disk space in {results}"
        assert not [p for p in results.rglob("*.tmp")]  # no half-written file left
        filler.unlink()  # space returns
        retried = parts.queue.claim(job_id)
        assert retried is not None
        parts.pipeline.process(retried)
        assert parts.queue.get(job_id).status is JobStatus.DONE
        assert parts.health.snapshot() == []
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True)
        os.sync()
