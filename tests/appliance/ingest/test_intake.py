"""Intake: hash a candidate file and queue it, or record why it could not be read."""

from __future__ import annotations

import getpass
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.ingest import Intake
from appliance.store import EnqueueOutcome, Job, JobQueue, JobStatus


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    with JobQueue(tmp_path / "node.sqlite3") as q:
        yield q


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def outcome_of(result: EnqueueOutcome | Job) -> EnqueueOutcome:
    assert isinstance(result, EnqueueOutcome), result
    return result


def rejection_of(result: EnqueueOutcome | Job) -> Job:
    assert isinstance(result, Job), result
    assert result.status is JobStatus.REJECTED and result.error_code == "unreadable"
    return result


def test_a_file_is_hashed_in_chunks_and_queued(queue: JobQueue, inbox: Path) -> None:
    content = os.urandom(10_000)
    path = inbox / "a.dcm"
    path.write_bytes(content)
    outcome = outcome_of(Intake(queue, chunk_size=4096).submit(path))
    assert outcome.queued
    job = outcome.job
    assert job.sha256 == hashlib.sha256(content).hexdigest()
    assert (job.path, job.size, job.mtime_ns) == (path, 10_000, path.stat().st_mtime_ns)


def test_same_content_under_another_name_is_a_duplicate(queue: JobQueue, inbox: Path) -> None:
    (inbox / "a.png").write_bytes(b"same bytes")
    (inbox / "b.png").write_bytes(b"same bytes")
    intake = Intake(queue)
    first = outcome_of(intake.submit(inbox / "a.png"))
    second = outcome_of(intake.submit(inbox / "b.png"))
    assert second.duplicate_of == first.id and second.status is JobStatus.DUPLICATE


def test_the_same_file_again_records_nothing_new(queue: JobQueue, inbox: Path) -> None:
    path = inbox / "a.png"
    path.write_bytes(b"bytes")
    intake = Intake(queue)
    first = outcome_of(intake.submit(path))
    again = outcome_of(intake.submit(path))  # e.g. the scan at the next start
    assert again.already_seen and not again.queued and again.id == first.id
    assert sum(queue.counts().values()) == 1
    path.write_bytes(b"new bytes")  # rewritten in place: a new file
    assert outcome_of(intake.submit(path)).queued


def test_a_zero_byte_file_is_queued_for_the_reader_to_judge(queue: JobQueue, inbox: Path) -> None:
    path = inbox / "empty.dcm"
    path.touch()
    outcome = outcome_of(Intake(queue).submit(path))
    assert outcome.queued and outcome.job.size == 0
    assert outcome.job.sha256 == hashlib.sha256(b"").hexdigest()


def test_a_vanished_file_is_recorded_as_rejected(queue: JobQueue, inbox: Path) -> None:
    job = rejection_of(Intake(queue).submit(inbox / "gone.dcm"))
    assert "disappeared from the inbox" in str(job.reason)
    assert "drop it into the inbox again" in str(job.reason)
    # When it comes back it is queued: an unreadable rejection does not block it.
    (inbox / "gone.dcm").write_bytes(b"back")
    assert outcome_of(Intake(queue).submit(inbox / "gone.dcm")).queued


def test_an_unreadable_file_names_the_user_to_grant_access(queue: JobQueue, inbox: Path) -> None:
    path = inbox / "secret.dcm"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            pass
        else:  # root, or CAP_DAC_OVERRIDE: permissions cannot be denied here
            pytest.skip("this process reads files whatever their permissions (root)")
        job = rejection_of(Intake(queue).submit(path))
    finally:
        path.chmod(0o644)
    assert f"'{getpass.getuser()}'" in str(job.reason)
    assert "read access" in str(job.reason) and "again" in str(job.reason)


def test_a_folder_is_recorded_as_rejected(queue: JobQueue, inbox: Path) -> None:
    (inbox / "study").mkdir()
    job = rejection_of(Intake(queue).submit(inbox / "study"))
    assert "not a regular file" in str(job.reason)


def test_submit_is_thread_safe(queue: JobQueue, inbox: Path) -> None:
    for i in range(8):
        (inbox / f"{i}.png").write_bytes(b"identical content" * 1000)
    intake = Intake(queue, chunk_size=1000)
    barrier = threading.Barrier(8)
    results: list[EnqueueOutcome | Job] = []

    def submit(i: int) -> None:
        barrier.wait(timeout=10)
        results.append(intake.submit(inbox / f"{i}.png"))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    outcomes = [outcome_of(r) for r in results]
    assert len(outcomes) == 8
    assert sum(o.queued for o in outcomes) == 1
    assert queue.counts()["queued"] == 1 and queue.counts()["duplicate"] == 7


def test_the_inbox_file_is_left_as_it_was(queue: JobQueue, inbox: Path) -> None:
    path = inbox / "a.dcm"
    path.write_bytes(b"content")
    before = path.stat()
    Intake(queue).submit(path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_mode) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_mode,
    )
    assert path.read_bytes() == b"content"
