"""The durable job queue on a real SQLite file: dedupe, claiming, recovery, concurrency."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.store import (
    JobNotFoundError,
    JobQueue,
    JobStateError,
    JobStatus,
    StoreError,
)
from appliance.store.instances import InstanceClaim, InstanceIdentity, InstanceVerdict


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite3"


@pytest.fixture
def queue(db: Path) -> Iterator[JobQueue]:
    with JobQueue(db) as q:
        yield q


def _run_in_threads(n: int, target: Callable[[int], object]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


# -- enqueue and dedupe --------------------------------------------------------------------


def test_enqueue_creates_a_queued_job_with_every_column(queue: JobQueue, tmp_path: Path) -> None:
    outcome = queue.enqueue(tmp_path / "a.dcm", sha("a").upper(), 123, mtime_ns=42)
    job = outcome.job
    assert outcome.queued and outcome.duplicate_of is None and not outcome.already_seen
    assert (outcome.id, outcome.status, outcome.path) == (job.id, JobStatus.QUEUED, job.path)
    assert job.path == tmp_path / "a.dcm"
    assert job.sha256 == sha("a")  # stored lower case
    assert (job.size, job.mtime_ns, job.attempts) == (123, 42, 0)
    assert job.status == "queued" and not job.is_terminal
    assert job.created_at.tzinfo is not None and job.started_at is None
    assert queue.get(job.id) == job


def test_same_content_is_recorded_as_a_duplicate_row(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.enqueue(tmp_path / "a.png", sha("x"), 5).job
    again = queue.enqueue(tmp_path / "copy-of-a.png", sha("x"), 5)
    assert again.duplicate_of == first.id and not again.queued
    dup = again.job
    assert dup.status is JobStatus.DUPLICATE and dup.duplicate_of == first.id
    assert f"job {first.id}" in str(dup.reason)
    assert "a.png" not in str(dup.reason)  # a file name may be a patient's: kept out of reasons
    assert dup.finished_at is not None
    assert queue.counts()["queued"] == 1 and queue.counts()["duplicate"] == 1
    assert queue.known_sha256(sha("x")) and not queue.known_sha256(sha("y"))


@pytest.mark.parametrize(
    ("finish", "is_duplicate"),
    [
        ("running", True),
        ("done", True),
        ("rejected_content", True),
        ("rejected_unreadable", False),
        ("failed", False),
    ],
)
def test_which_earlier_jobs_make_a_new_file_a_duplicate(
    queue: JobQueue, tmp_path: Path, finish: str, is_duplicate: bool
) -> None:
    first = queue.enqueue(tmp_path / "a.png", sha("x"), 5).job
    queue.claim_next()
    if finish == "done":
        queue.mark_done(first.id, "v1")
    elif finish == "rejected_content":
        queue.mark_rejected(first.id, "corrupt", "truncated PNG")
    elif finish == "rejected_unreadable":
        queue.mark_rejected(first.id, "unreadable", "vanished")
    elif finish == "failed":
        queue.mark_failed(first.id, "internal_error", "bug")
    outcome = queue.enqueue(tmp_path / "b.png", sha("x"), 5)
    assert (outcome.duplicate_of == first.id) is is_duplicate
    assert outcome.queued is not is_duplicate


def test_concurrent_enqueue_of_one_content_queues_exactly_one_job(db: Path) -> None:
    JobQueue(db).close()  # migrate once, outside the race
    queues = [JobQueue(db) for _ in range(8)]  # separate connections: the race is in SQLite
    shared = JobQueue(db)
    try:
        _run_in_threads(8, lambda i: queues[i].enqueue(Path(f"/inbox/{i}.png"), sha("x"), 9))
        _run_in_threads(8, lambda i: shared.enqueue(Path(f"/inbox/s{i}.png"), sha("y"), 9))
        for content in ("x", "y"):
            jobs = [j for j in shared.list_jobs(limit=100) if j.sha256 == sha(content)]
            queued = [j for j in jobs if j.status is JobStatus.QUEUED]
            assert len(jobs) == 8 and len(queued) == 1
            assert all(
                j.duplicate_of == queued[0].id for j in jobs if j.status is JobStatus.DUPLICATE
            )
    finally:
        for q in (*queues, shared):
            q.close()


def test_record_rejected_keeps_files_that_could_not_be_queued(
    queue: JobQueue, tmp_path: Path
) -> None:
    job = queue.record_rejected(tmp_path / "gone.dcm", "unreadable", "it vanished")
    assert job.status is JobStatus.REJECTED and job.is_terminal
    assert (job.error_code, job.reason, job.sha256, job.attempts) == (
        "unreadable",
        "it vanished",
        None,
        0,
    )
    assert job.finished_at is not None
    assert queue.claim_next() is None


def test_path_seen_finds_the_same_file_but_not_an_unreadable_rejection(
    queue: JobQueue, tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    job = queue.enqueue(path, sha("a"), 10, mtime_ns=7).job
    assert queue.path_seen(path, 10, 7) == job
    assert queue.path_seen(path, 10, 8) is None
    assert queue.path_seen(path, 11, 7) is None
    other = tmp_path / "b.png"
    queue.record_rejected(other, "unreadable", "permission denied", size=3, mtime_ns=1)
    assert queue.path_seen(other, 3, 1) is None


def test_bad_arguments_are_refused_with_what_was_expected(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        queue.enqueue(Path("a"), "abc", 1)
    with pytest.raises(ValueError, match="size"):
        queue.enqueue(Path("a"), sha("a"), -1)
    with pytest.raises(ValueError, match="unknown job status 'finished'"):
        queue.list_jobs("finished")
    with pytest.raises(ValueError, match="max_attempts"):
        queue.recover_interrupted(0)


# -- claiming ------------------------------------------------------------------------------


def test_claim_next_takes_the_oldest_queued_job(queue: JobQueue) -> None:
    ids = [queue.enqueue(Path(f"{i}.png"), sha(str(i)), 1).id for i in range(3)]
    job = queue.claim_next()
    assert job is not None and job.id == ids[0]
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.started_at is not None
    assert [queue.claim_next(), queue.claim_next()] == [queue.get(ids[1]), queue.get(ids[2])]
    assert queue.claim_next() is None


def test_claim_of_a_given_job_only_when_it_is_queued(queue: JobQueue) -> None:
    job_id = queue.enqueue(Path("a.png"), sha("a"), 1).id
    claimed = queue.claim(job_id)
    assert claimed is not None and claimed.status is JobStatus.RUNNING
    assert queue.claim(job_id) is None
    with pytest.raises(JobNotFoundError):
        queue.claim(999)


def test_claim_next_from_several_threads_never_hands_a_job_out_twice(db: Path) -> None:
    with JobQueue(db) as setup:
        expected = {setup.enqueue(Path(f"{i}.png"), sha(str(i)), 1).id for i in range(40)}
    queues = [JobQueue(db) for _ in range(3)]
    shared = JobQueue(db)
    workers = [*queues, shared, shared, shared]  # own connections and one shared one
    claimed: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        while (job := workers[i].claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    try:
        _run_in_threads(len(workers), work)
        assert sorted(claimed) == sorted(expected)
        assert len(claimed) == len(set(claimed))
        assert shared.counts()["running"] == 40
    finally:
        for q in (*queues, shared):
            q.close()


def test_terminal_marks_need_a_running_job(queue: JobQueue, tmp_path: Path) -> None:
    a, b, c, d = (queue.enqueue(Path(f"{n}.png"), sha(n), 1).id for n in "abcd")
    with pytest.raises(JobStateError, match="it is 'queued', expected 'running'") as info:
        queue.mark_done(a, "v1")
    assert (info.value.job_id, info.value.status) == (a, "queued")
    for _ in range(4):
        queue.claim_next()
    done = queue.mark_done(a, "v1")
    assert done.status is JobStatus.DONE and done.model_version == "v1" and done.finished_at
    rejected = queue.mark_rejected(b, "corrupt", "truncated", quarantine_path=tmp_path / "q")
    assert (rejected.error_code, rejected.reason) == ("corrupt", "truncated")
    assert rejected.quarantine_path == tmp_path / "q"
    failed = queue.mark_failed(c, "internal_error", "boom")
    assert failed.status is JobStatus.FAILED
    dup = queue.mark_duplicate(d, a, "same SOP Instance UID as job 1")
    assert dup.status is JobStatus.DUPLICATE and dup.duplicate_of == a
    with pytest.raises(JobStateError):
        queue.mark_failed(a, "x", "y")  # done stays done
    with pytest.raises(JobNotFoundError):
        queue.mark_done(999, "v1")
    assert queue.counts() == {
        "queued": 0,
        "running": 0,
        "done": 1,
        "rejected": 1,
        "failed": 1,
        "duplicate": 1,
    }


def _identity(uid: str, patient: str | None = "P1", pixels: str = "p") -> InstanceIdentity:
    return InstanceIdentity(uid, patient, "1.2.840.study", sha(pixels))


def test_register_instance_tells_a_resend_from_a_uid_conflict(queue: JobQueue) -> None:
    a, b, c, d, e = (queue.enqueue(Path(f"{n}.dcm"), sha(n), 1).id for n in "abcde")
    for _ in range(5):
        queue.claim_next()
    assert queue.register_instance(a, _identity("1.2.3")).verdict is InstanceVerdict.NEW
    again = queue.register_instance(a, _identity("1.2.3"))  # its own uid again
    assert again.verdict is InstanceVerdict.NEW
    assert queue.get(a).sop_instance_uid == "1.2.3" and queue.get(a).pixel_sha256 == sha("p")
    assert "1.2.3" not in repr(queue.get(a))  # an identifier: never in a log line
    # The same instance (uid, patient, study, pixels): a re-send of a.
    assert queue.register_instance(b, _identity("1.2.3")) == InstanceClaim(
        InstanceVerdict.RESEND, a
    )
    # Same uid, another patient: a conflict, never a duplicate of a.
    other_patient = queue.register_instance(c, _identity("1.2.3", patient="P2"))
    assert other_patient == InstanceClaim(InstanceVerdict.CONFLICT, a)
    assert queue.get(c).conflict_of == a
    # Same uid and patient, other pixels: a conflict too.
    other_pixels = queue.register_instance(d, _identity("1.2.3", pixels="q"))
    assert other_pixels.verdict is InstanceVerdict.CONFLICT
    # The uid stays a's: e's identical instance is a re-send of a, not of c or d.
    assert queue.register_instance(e, _identity("1.2.3")).other == a
    queue.mark_done(a, "v1")
    with pytest.raises(JobStateError):
        queue.register_instance(a, _identity("4.5.6"))  # a is no longer running


def test_a_uid_held_by_a_job_without_results_is_handed_on(queue: JobQueue) -> None:
    a, c = (queue.enqueue(Path(f"{n}.dcm"), sha(n), 1).id for n in "ac")
    queue.claim_next()
    queue.claim_next()
    queue.register_instance(a, _identity("1.2.3"))
    queue.mark_rejected(a, "too_large", "image too large")
    claim = queue.register_instance(c, _identity("1.2.3", patient="P9"))
    assert claim.verdict is InstanceVerdict.NEW and queue.get(c).conflict_of is None
    d = queue.enqueue(Path("d.dcm"), sha("d"), 1).id
    queue.claim_next()
    assert queue.register_instance(d, _identity("1.2.3", patient="P9")).other == c


def test_a_holder_recorded_before_pixel_digests_is_never_assumed_identical(
    queue: JobQueue, db: Path
) -> None:
    a, b = (queue.enqueue(Path(f"{n}.dcm"), sha(n), 1).id for n in "ab")
    queue.claim_next()
    queue.claim_next()
    with sqlite3.connect(db) as conn:  # what a schema-v2 node left: the uid alone
        conn.execute("INSERT INTO sop_uids (uid, job_id) VALUES ('1.2.3', ?)", (a,))
    assert queue.register_instance(b, _identity("1.2.3")).verdict is InstanceVerdict.CONFLICT


# -- recovery ------------------------------------------------------------------------------


def test_recover_interrupted_requeues_then_sets_aside(queue: JobQueue) -> None:
    crashy = queue.enqueue(Path("crashy.dcm"), sha("crashy"), 1).id
    waiting = queue.enqueue(Path("waiting.dcm"), sha("waiting"), 1).id
    for attempt in (1, 2):
        job = queue.claim_next()
        assert job is not None and (job.id, job.attempts) == (crashy, attempt)
        # The node is killed here; at the next start:
        recovered = queue.recover_interrupted(max_attempts=3)
        assert [(j.id, j.status) for j in recovered] == [(crashy, JobStatus.QUEUED)]
        assert recovered[0].started_at is None
    job = queue.claim_next()
    assert job is not None and (job.id, job.attempts) == (crashy, 3)
    (failed,) = queue.recover_interrupted(max_attempts=3)
    assert failed.status is JobStatus.FAILED and failed.error_code == "interrupted"
    assert failed.reason == (
        "the node stopped 3 times while processing this file; it is set aside (see the node "
        f"log). Retry it with `fame-node jobs retry {crashy}`."
    )
    assert queue.get(waiting).status is JobStatus.QUEUED
    # The job set aside is in the audit log, with its code and no file name.
    from appliance.store.audit import AuditLog

    (entry,) = AuditLog(queue.path).read(action="job_failed")
    assert entry.subject == f"job:{crashy}" and "crashy" not in str(entry.detail)
    assert queue.recover_interrupted() == []
    nxt = queue.claim_next()
    assert nxt is not None and nxt.id == waiting


# -- reading -------------------------------------------------------------------------------


def test_counts_and_list_jobs(queue: JobQueue) -> None:
    assert queue.counts() == {s.value: 0 for s in JobStatus}
    ids = [queue.enqueue(Path(f"{i}.png"), sha(str(i)), 1).id for i in range(5)]
    queue.claim_next()
    assert [j.id for j in queue.list_jobs()] == ids[::-1]
    assert [j.id for j in queue.list_jobs(limit=2, offset=1)] == [ids[3], ids[2]]
    assert [j.id for j in queue.list_jobs(JobStatus.RUNNING)] == [ids[0]]
    assert [j.id for j in queue.list_jobs("queued", limit=10)] == ids[:0:-1]
    assert queue.counts()["queued"] == 4 and queue.counts()["running"] == 1
    with pytest.raises(JobNotFoundError, match="no job 999"):
        queue.get(999)


def test_times_come_from_the_clock_given(db: Path) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    ticks = (start + timedelta(seconds=i) for i in itertools.count())
    with JobQueue(db, clock=lambda: next(ticks)) as queue:
        job = queue.enqueue(Path("a.png"), sha("a"), 1).job
        running = queue.claim_next()
        assert running is not None
        done = queue.mark_done(job.id, "v1")
    assert job.created_at == start
    assert done.created_at < running.started_at < done.finished_at  # type: ignore[operator]
    assert done.updated_at == done.finished_at


def test_a_closed_queue_says_so(db: Path) -> None:
    queue = JobQueue(db)
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        queue.counts()


# -- a second process ----------------------------------------------------------------------

_READER = """
import json, sys, time
from pathlib import Path
from appliance.store import JobQueue

db, want = Path(sys.argv[1]), int(sys.argv[2])
with JobQueue(db, busy_timeout_s=0.5) as queue:
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    total = sum(queue.counts().values())
    print(json.dumps([total, time.monotonic() - t0]), flush=True)
    sys.stdin.readline()
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen.append(sum(queue.counts().values()))
        if seen[-1] >= want:
            break
    print(json.dumps(seen), flush=True)
"""


def test_a_second_process_reads_counts_while_the_first_writes(db: Path) -> None:
    with JobQueue(db) as queue:
        queue.enqueue(Path("first.png"), sha("first"), 1)
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(db), "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert reader.stdin is not None and reader.stdout is not None
        try:
            assert reader.stdout.readline().strip() == "ready"
            # Another connection holds the write lock with an uncommitted row: a WAL
            # reader neither waits for it (busy timeout 0.5 s) nor sees the row.
            writer = sqlite3.connect(db, isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")
            writer.execute(
                "INSERT INTO jobs (path, status, created_at, updated_at) "
                "VALUES ('uncommitted.png', 'queued', 'x', 'x')"
            )
            reader.stdin.write("go\n")
            reader.stdin.flush()
            total, elapsed = json.loads(reader.stdout.readline())
            writer.execute("ROLLBACK")
            writer.close()
            assert total == 1 and elapsed < 0.4
            # Then it follows the writes as they are committed.
            reader.stdin.write("go\n")
            reader.stdin.flush()
            for i in range(29):
                queue.enqueue(Path(f"{i}.png"), sha(str(i)), 1)
            out, err = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    assert reader.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == sorted(seen) and seen[0] >= 1 and seen[-1] == 30
