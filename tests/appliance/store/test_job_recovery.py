"""Passing faults, stops and set-aside jobs: defer with backoff, requeue, retry."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.store import JobQueue, JobStatus
from appliance.store.job_recovery import path_text
from appliance.store.job_types import JobStateError


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Iterator[JobQueue]:
    with JobQueue(tmp_path / "node.sqlite3", clock=clock) as q:
        yield q


def test_a_deferred_job_waits_its_backoff_and_keeps_its_attempts(
    queue: JobQueue, clock: Clock
) -> None:
    job_id = queue.enqueue(Path("a.png"), sha("a"), 1).id
    later = queue.enqueue(Path("b.png"), sha("b"), 1).id
    assert queue.claim_next() is not None
    deferred = queue.defer(job_id, "disk space in /srv/results", 30)
    assert deferred.status is JobStatus.QUEUED and deferred.retries == 1
    assert deferred.attempts == 0  # a full disk is not the file's fault
    assert deferred.waiting_for == "disk space in /srv/results"
    assert queue.waiting() == {"disk space in /srv/results": 1}
    # Not due yet: the next job is taken instead, then nothing.
    nxt = queue.claim_next()
    assert nxt is not None and nxt.id == later
    assert queue.claim_next() is None
    assert queue.next_due() == clock.now + timedelta(seconds=30)
    clock.now += timedelta(seconds=31)
    again = queue.claim_next()
    assert again is not None and again.id == job_id and again.attempts == 1
    done = queue.mark_done(job_id, "v1")
    assert done.waiting_for is None and done.not_before is None
    assert queue.waiting() == {}


def test_requeue_puts_unfinished_jobs_back_without_counting_an_attempt(queue: JobQueue) -> None:
    a = queue.enqueue(Path("a.png"), sha("a"), 1).id
    b = queue.enqueue(Path("b.png"), sha("b"), 1).id
    queue.claim_next()
    queue.claim_next()
    queue.mark_done(b, "v1")
    back = queue.requeue([a, b])  # b finished meanwhile: left as it is
    assert [(j.id, j.status, j.attempts) for j in back] == [(a, JobStatus.QUEUED, 0)]
    assert queue.get(b).status is JobStatus.DONE


def test_retry_brings_failed_jobs_back(queue: JobQueue) -> None:
    a = queue.enqueue(Path("a.png"), sha("a"), 1).id
    b = queue.enqueue(Path("b.png"), sha("b"), 1).id
    queue.claim_next()
    queue.claim_next()
    queue.mark_failed(a, "internal_error", "bug")
    queue.mark_done(b, "v1")
    with pytest.raises(JobStateError, match="expected 'failed'"):
        queue.retry([b])
    (retried,) = queue.retry()
    assert (retried.id, retried.status, retried.attempts) == (a, JobStatus.QUEUED, 0)
    assert retried.reason is None and retried.error_code is None
    assert queue.retry() == []


def test_a_failed_file_dropped_again_is_queued_again(queue: JobQueue, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    first = queue.enqueue(path, sha("a"), 5, mtime_ns=9).id
    queue.claim_next()
    queue.mark_failed(first, "internal_error", "bug")
    assert queue.path_seen(path, 5, 9) is None  # same file again: worth another try
    again = queue.enqueue(path, sha("a"), 5, mtime_ns=9)
    assert again.queued and again.id != first


def test_a_name_that_is_not_utf8_is_stored_as_readable_text(queue: JobQueue) -> None:
    name = Path(b"/inbox/caf\xe9.png".decode("utf-8", "surrogateescape"))
    job = queue.enqueue(name, sha("x"), 1).job
    assert str(job.path) == "/inbox/caf\\xe9.png" == path_text(name)
    assert queue.path_seen(name, 1, 0) is None  # looked up the same way, no error


def test_release_spool_keeps_a_copy_another_job_still_needs(
    queue: JobQueue, tmp_path: Path
) -> None:
    copy = tmp_path / "spool" / sha("x")
    a = queue.enqueue(tmp_path / "a.png", sha("x"), 1, spool_path=copy).id
    queue.claim_next()
    queue.mark_failed(a, "internal_error", "bug")  # failed: kept for `jobs retry`
    (b_job,) = queue.retry()
    assert queue.spool_in_use(copy)
    queue.claim_next()
    queue.mark_done(b_job.id, "v1")
    assert queue.release_spool(b_job.id) == copy  # nobody else: the caller deletes it
    assert not queue.spool_in_use(copy)
